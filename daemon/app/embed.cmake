# Writes OUTPUT, a C file holding each of INPUTS (a ;-list of files) as a
# byte array with its length: web_<name>[] and web_<name>_len, where <name>
# is the file name with '.' and '-' turned into '_'.
set(out "/* Made by daemon/app/embed.cmake from the files in web/: do not edit. */\n#include <stddef.h>\n\n")
foreach(f IN LISTS INPUTS)
  get_filename_component(name "${f}" NAME)
  string(MAKE_C_IDENTIFIER "${name}" id)
  file(READ "${f}" hex HEX)
  string(LENGTH "${hex}" n)
  math(EXPR size "${n} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "((0x..,){16})" "\\1\n" bytes "${bytes}")
  string(APPEND out "const unsigned char web_${id}[] = {\n${bytes}0};\nconst size_t web_${id}_len = ${size};\n\n")
endforeach()
file(WRITE "${OUTPUT}.tmp" "${out}")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
