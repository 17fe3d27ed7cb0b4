# Lists the trees named by $2... inside the root $1, one entry a line, sorted by path:
#   PATH dir MODE UID:GID
#   PATH file MODE UID:GID = CONTENT        (newlines shown as |)
#   PATH link UID:GID -> TARGET
# Only readdir names are listed; every listed name is lstat'ed (lookup must agree).
# Used inside containers (root /) and on the host for an exported tree.
export LC_ALL=C
cd "$1" || exit 1
shift
for top in "$@"; do find ".$top"; done | sort | while IFS= read -r p; do
    n="${p#.}"
    if [ -L "$p" ]; then
        echo "$n link $(stat -c '%u:%g' "$p") -> $(readlink "$p")"
    elif [ -d "$p" ]; then
        echo "$n dir $(stat -c '%a %u:%g' "$p")"
    elif [ -f "$p" ]; then
        echo "$n file $(stat -c '%a %u:%g' "$p") = $(tr '\n' '|' < "$p")"
    else
        echo "$n other $(stat -c '%F %a %u:%g' "$p")"
    fi
done
