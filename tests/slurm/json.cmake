# Reads JSON for the shell tests with CMake's own parser (string(JSON), CMake >= 3.19), since CMake
# is the one JSON-capable tool every build machine has.
#
#   cmake -DFILE=f.json -P json.cmake                    prints every key=value, sorted, nested
#                                                        keys as outer.inner, true/false as ON/OFF
#   cmake -DFILE=f.jsonl -DLINES=ON -P json.cmake        the same for each non-empty line, with a
#                                                        "--- line N" header before each
# Fails (exit code 1, message on stderr) when the file is missing, is not valid JSON, or is not an
# object (for LINES: when any line is not, or when there are no lines at all).
cmake_minimum_required(VERSION 3.19)

# Appends "prefix.key=value" lines for every member of the object `text`, descending into nested
# objects (machine.ranks=2); arrays and scalars are printed as they are.
function(flatten text prefix)
  set(lines "")
  string(JSON n LENGTH "${text}")
  if(n GREATER 0)
    math(EXPR last "${n} - 1")
    foreach(i RANGE ${last})
      string(JSON key MEMBER "${text}" ${i})
      string(JSON type TYPE "${text}" "${key}")
      string(JSON value GET "${text}" "${key}")
      if(type STREQUAL "OBJECT")
        flatten("${value}" "${prefix}${key}.")
        list(APPEND lines ${flat})
      else()
        string(REPLACE "\n" " " value "${value}")
        string(REPLACE ";" "\\;" value "${value}")
        list(APPEND lines "${prefix}${key}=${value}")
      endif()
    endforeach()
  endif()
  set(flat "${lines}" PARENT_SCOPE)
endfunction()

function(print_object text where)
  string(JSON type ERROR_VARIABLE err TYPE "${text}")
  if(err OR NOT type STREQUAL "OBJECT")
    message(FATAL_ERROR "${where}: not a JSON object: ${err}")
  endif()
  flatten("${text}" "")
  list(SORT flat)
  list(JOIN flat "\n" joined)
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
