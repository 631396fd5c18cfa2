/* Helpers shared by the fuzz targets that load files: one private temporary
 * folder per process, removed at exit. */
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char fuzz_dir_path[64];

static void fuzz_dir_clear(void)
{
        DIR *d = opendir(fuzz_dir_path);
        struct dirent *de;

        if (!d)
                return;
        while ((de = readdir(d)))
                if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                        (void)unlinkat(dirfd(d), de->d_name, 0);
        closedir(d);
}

static void fuzz_dir_remove(void)
{
        fuzz_dir_clear();
        (void)rmdir(fuzz_dir_path);
}

/* The folder, created at the first call. */
static const char *fuzz_dir(void)
{
        if (!fuzz_dir_path[0]) {
                const char *tmp = getenv("TMPDIR");

                snprintf(fuzz_dir_path, sizeof(fuzz_dir_path), "%s/sw-fuzz-XXXXXX",
                         tmp && *tmp && strlen(tmp) < 40 ? tmp : "/tmp");
                if (!mkdtemp(fuzz_dir_path)) {
                        perror("fuzz: mkdtemp");
                        abort();
                }
                atexit(fuzz_dir_remove);
        }
        return fuzz_dir_path;
}

/* Writes data to <folder>/name (replacing it); aborts on failure, which is
 * the harness's problem, not the code's under test. */
static void fuzz_write_file(const char *name, const void *data, size_t size)
{
        char path[256];
        int fd;

        snprintf(path, sizeof(path), "%s/%s", fuzz_dir(), name);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || (size && write(fd, data, size) != (ssize_t)size)) {
                perror("fuzz: write");
                abort();
        }
        close(fd);
}
