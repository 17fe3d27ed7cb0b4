# What a container changes in its image's /data, done once: a restart of the stopped
# container runs the command again and only appends to /data/stamp.
if [ ! -e /data/stamp ]; then
    set -e
    echo more >> /data/mod.txt                       # modify a file of layer 2 (copy-up)
    rm /data/keep.txt                                # delete a file of layer 1
    rm -r /data/deep                                 # delete a tree merged from layers 1 and 2
    chmod 600 /data/replace_dir                      # chmod a file that hides a lower directory
    mv /data/file_to_dir/inner.txt /data/file_to_dir/renamed.txt
    ln -s mod.txt /data/newlink
    mkdir -p /data/newdir/sub
    echo n > /data/newdir/sub/n.txt
    echo x > /data/dir_del/c2                        # in a directory re-created over a whiteout
    rm /data/dir_del/c
    ln /data/l1only.txt /data/l1hard                 # hard link to a file of layer 1
    mv /data/l3.txt /data/l3moved.txt
    chown 1234:5678 /data/exec.sh
    echo more >> /data/owned/f                       # copy-up of a file not owned by root
    set +e
fi
echo run >> /data/stamp
