#!/bin/sh
# Stands in for the mount program: appends how containers/storage ran it (uid as seen by the
# program, working directory, every argument in brackets) to a log, then runs the program
# under test with the same arguments. The test fills in @LOG@ and @PROG@.
{
    printf 'uid=%s cwd=%s argv:' "$(id -u)" "$(pwd)"
    for a in "$@"; do printf ' [%s]' "$a"; done
    printf '\n'
} >> '@LOG@'
exec '@PROG@' "$@"
