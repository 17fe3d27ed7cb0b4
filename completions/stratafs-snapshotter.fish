complete -c stratafs-snapshotter -l root -d 'Where snapshots and their metadata live [default: /var/lib/stratafs-snapshotter as root, else $XDG_DATA_HOME/stratafs-snapshotter]' -r -F
complete -c stratafs-snapshotter -l address -d 'The unix socket to serve on, the `address` of containerd\'s proxy_plugins entry [default: /run/stratafs-snapshotter/grpc.sock as root, else $XDG_RUNTIME_DIR/stratafs-snapshotter/grpc.sock]' -r -F
complete -c stratafs-snapshotter -l log-level -d 'What to log: error, warn, info, debug or trace, or a RUST_LOG-style filter (RUST_LOG wins when set)' -r
complete -c stratafs-snapshotter -l redirect-dir -d 'Add `redirect_dir=on` to every union mount (renames of lower directories; off by default, as in containerd\'s overlayfs snapshotter)'
complete -c stratafs-snapshotter -l metacopy -d 'Add `metacopy=on` to every union mount (copy-up of metadata alone; off by default)'
complete -c stratafs-snapshotter -s h -l help -d 'Print help (see more with \'--help\')'
complete -c stratafs-snapshotter -s V -l version -d 'Print version'
