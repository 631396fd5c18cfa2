/* A small stand-in for libFuzzer's driver, so the fuzz targets run in every
 * build (gcc included) as a ctest test: it replays every file of the corpus
 * folders given on the command line, then runs a fixed number of seeded
 * random mutations of them (bit flips, byte insertions and deletions,
 * truncations, splices). With clang, -DSW_FUZZ=ON builds the targets against
 * the real libFuzzer instead. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Input {
        uint8_t *data;
        size_t size;
} Input;

static uint64_t rng_state = 0x5eed5eed5eedULL;

static uint64_t rng(void)
{
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

static int load_dir(const char *dir, Input **inputs, size_t *n)
{
        DIR *d = opendir(dir);
        struct dirent *de;

        if (!d) {
                fprintf(stderr, "fuzz: cannot open corpus '%s': %s\n", dir, strerror(errno));
                return -1;
        }
        while ((de = readdir(d))) {
                char path[4096];
                struct stat st;
                FILE *f;
                Input in;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
                        continue;
                f = fopen(path, "rb");
                if (!f)
                        continue;
                in.size = (size_t)st.st_size;
                in.data = malloc(in.size ? in.size : 1);
                if (!in.data || fread(in.data, 1, in.size, f) != in.size) {
                        fclose(f);
                        free(in.data);
                        continue;
                }
                fclose(f);
                *inputs = realloc(*inputs, (*n + 1) * sizeof(Input));
                if (!*inputs)
                        abort();
                (*inputs)[(*n)++] = in;
        }
        closedir(d);
        return 0;
}

static size_t mutate(const Input *in, const Input *other, uint8_t *out, size_t cap)
{
        size_t n = in->size < cap ? in->size : cap;

        memcpy(out, in->data, n);
        for (int k = (int)(rng() % 4) + 1; k > 0; k--) {
                size_t pos = n ? rng() % n : 0;

                switch (rng() % 6) {
                case 0: /* flip a bit */
                        if (n)
                                out[pos] ^= (uint8_t)(1u << (rng() % 8));
                        break;
                case 1: /* an interesting byte */ {
                        static const uint8_t bytes[] = { '"', '\\', '{', '}', '[', ']', ':', ',', 0, 0xff, 0xc3, 'u' };
                        if (n)
                                out[pos] = bytes[rng() % sizeof(bytes)];
                        break;
                }
                case 2: /* delete a run */
                        if (n) {
                                size_t len = 1 + rng() % (n - pos);
                                memmove(out + pos, out + pos + len, n - pos - len);
                                n -= len;
                        }
                        break;
                case 3: /* duplicate a run */
                        if (n && n < cap) {
                                size_t len = 1 + rng() % (n - pos);
                                if (len > cap - n)
                                        len = cap - n;
                                memmove(out + pos + len, out + pos, n - pos);
                                n += len;
                        }
                        break;
                case 4: /* truncate */
                        n = pos;
                        break;
                case 5: /* splice in a piece of another input */
                        if (other->size) {
                                size_t from = rng() % other->size, len = 1 + rng() % (other->size - from);
                                if (pos + len > cap)
                                        len = cap - pos;
                                memcpy(out + pos, other->data + from, len);
                                if (pos + len > n)
                                        n = pos + len;
                        }
                        break;
                }
        }
        return n;
}

int main(int argc, char **argv)
{
        Input *inputs = NULL;
        size_t n = 0, runs = 200000, cap = 1 << 16;
        uint8_t *buf;
        int first = 1;

        if (argc > 1 && strncmp(argv[1], "-runs=", 6) == 0) {
                runs = strtoull(argv[1] + 6, NULL, 10);
                first = 2;
        }
        for (int i = first; i < argc; i++)
                if (load_dir(argv[i], &inputs, &n) < 0)
                        return 1;
        if (n == 0) {
                fprintf(stderr, "fuzz: empty corpus\n");
                return 1;
        }
        for (size_t i = 0; i < n; i++)
                LLVMFuzzerTestOneInput(inputs[i].data, inputs[i].size);

        buf = malloc(cap);
        if (!buf)
                return 1;
        for (size_t r = 0; r < runs; r++) {
                const Input *a = &inputs[rng() % n], *b = &inputs[rng() % n];
                size_t len = mutate(a, b, buf, cap);
                /* A copy of the exact size, so that ASan sees reads past the end. */
                uint8_t *exact = malloc(len ? len : 1);
                memcpy(exact, buf, len);
                LLVMFuzzerTestOneInput(exact, len);
                free(exact);
        }
        printf("fuzz: %zu corpus inputs and %zu mutations, no failure\n", n, runs);
        for (size_t i = 0; i < n; i++)
                free(inputs[i].data);
        free(inputs);
        free(buf);
        return 0;
}
