# Reads JSON for the shell tests with CMake's own parser (string(JSON), CMake >= 3.19), since CMake
# is the one JSON-capable tool every build machine has.
#
#   cmake -DFILE=f.json -P json.cmake                    prints every top-level key=value, sorted
#   cmake -DFILE=f.jsonl -DLINES=ON -P json.cmake        the same for each non-empty line, with a
#                                                        "--- line N" header before each
# Fails (exit code 1, message on stderr) when the file is missing, is not valid JSON, or is not an
# object (for LINES: when any line is not, or when there are no lines at all).
cmake_minimum_required(VERSION 3.19)

function(print_object text where)
  string(JSON type ERROR_VARIABLE err TYPE "${text}")
  if(err OR NOT type STREQUAL "OBJECT")
    message(FATAL_ERROR "${where}: not a JSON object: ${err}")
  endif()
  string(JSON n LENGTH "${text}")
  set(out "")
  if(n GREATER 0)
    math(EXPR last "${n} - 1")
    foreach(i RANGE ${last})
      string(JSON key MEMBER "${text}" ${i})
      string(JSON value GET "${text}" "${key}")
      list(APPEND out "${key}=${value}")
    endforeach()
  endif()
  list(SORT out)
  list(JOIN out "\n" joined)
  set(result "${result}${joined}\n" PARENT_SCOPE)
endfunction()

# CMake has no plain print to stdout; collect everything and echo it once at the end.
set(result "")

if(NOT DEFINED FILE OR NOT EXISTS "${FILE}")
  message(FATAL_ERROR "json.cmake: no such file: '${FILE}'")
endif()
if(LINES)
  file(STRINGS "${FILE}" lines)
  set(count 0)
  foreach(line IN LISTS lines)
    if(line STREQUAL "")
      continue()
    endif()
    math(EXPR count "${count} + 1")
    set(result "${result}--- line ${count}\n")
    print_object("${line}" "${FILE}:${count}")
  endforeach()
  if(count EQUAL 0)
    message(FATAL_ERROR "${FILE}: no JSON lines")
  endif()
else()
  file(READ "${FILE}" text)
  print_object("${text}" "${FILE}")
endif()
string(REGEX REPLACE "\n$" "" result "${result}")
execute_process(COMMAND ${CMAKE_COMMAND} -E echo "${result}")
