# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_stratafs_mount_global_optspecs
    string join \n store= daemon= rootless h/help V/version
end

function __fish_stratafs_mount_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_stratafs_mount_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_stratafs_mount_using_subcommand
    set -l cmd (__fish_stratafs_mount_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -s V -l version -d 'Print version'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "import" -d 'Import an image: an OCI layout directory, an OCI archive or a docker-archive tar'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "create" -d 'Create a container from an image'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "mount" -d 'Mount a container\'s root filesystem (at TARGET, or the container\'s own directory)'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "umount" -d 'Unmount a container'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "rm" -d 'Remove a container (not while mounted)'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "ls" -d 'List images and containers (a mounted container with its daemon: pid, uptime, requests, nodes, open handles, copy-ups, memory)'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "rmi" -d 'Remove an image, or one of its tags'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "gc" -d 'Remove layers and blobs that nothing uses'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "diff" -d 'Show what a container changed: A(dded), C(hanged), D(eleted) paths'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "commit" -d 'Turn a container\'s changes into a new image'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "export" -d 'Write an image as an OCI image layout directory'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "inspect" -d 'Show which layer provides a path, and what it shadows'
complete -c stratafs-mount -n "__fish_stratafs_mount_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l tag -d 'Tag the image with this name (default: the name the archive gives it)' -r
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l ref -d 'Which image of a source holding several (its ref name or repo tag)' -r
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l max-layer-size -d 'The most a layer may unpack to (`20GiB`, `500MB`, bytes): its uncompressed tar, and its files with sparse holes counted [default: 100 times the layer\'s blob, at least 1 GiB]' -r
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand import" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand create" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand create" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand create" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand create" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l suid -d 'Let setuid and setgid bits and file capabilities of the image take effect (the default is `nosuid`)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l dev -d 'Let device nodes be opened (the default is `nodev`)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l redirect-dir -d 'Rename directories of the image in place (`redirect_dir=on`): `mv` of an image directory costs one rename instead of a copy of its tree. `commit` and `diff` write such a directory out in full'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l metacopy -d 'Copy up the metadata alone when a file of the image has its mode, owner, times or xattrs changed (`metacopy=on`, which turns `redirect_dir=on` too): `chown -R` over an image copies no data. `commit` writes such a file with its data'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand mount" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand umount" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand umount" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand umount" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand umount" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rm" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rm" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rm" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rm" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand ls" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand ls" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand ls" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand ls" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rmi" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rmi" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rmi" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand rmi" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand gc" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand gc" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand gc" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand gc" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand diff" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand diff" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand diff" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand diff" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand commit" -l tag -d 'The new image\'s tag' -r
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand commit" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand commit" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand commit" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand commit" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand export" -l oci -d 'The directory to write (must not exist, or be empty)' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand export" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand export" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand export" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand export" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand inspect" -l store -d 'The store directory [default: /var/lib/stratafs as root, else $XDG_DATA_HOME/stratafs]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand inspect" -l daemon -d 'The stratafs daemon to mount with [default: next to this program, else on PATH]' -r -F
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand inspect" -l rootless -d 'Write the unprivileged formats even as root: `.wh.` whiteouts, no device nodes, no owners (what an ordinary user gets anyway)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "import" -d 'Import an image: an OCI layout directory, an OCI archive or a docker-archive tar'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "create" -d 'Create a container from an image'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "mount" -d 'Mount a container\'s root filesystem (at TARGET, or the container\'s own directory)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "umount" -d 'Unmount a container'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "rm" -d 'Remove a container (not while mounted)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "ls" -d 'List images and containers (a mounted container with its daemon: pid, uptime, requests, nodes, open handles, copy-ups, memory)'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "rmi" -d 'Remove an image, or one of its tags'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "gc" -d 'Remove layers and blobs that nothing uses'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "diff" -d 'Show what a container changed: A(dded), C(hanged), D(eleted) paths'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "commit" -d 'Turn a container\'s changes into a new image'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "export" -d 'Write an image as an OCI image layout directory'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "inspect" -d 'Show which layer provides a path, and what it shadows'
complete -c stratafs-mount -n "__fish_stratafs_mount_using_subcommand help; and not __fish_seen_subcommand_from import create mount umount rm ls rmi gc diff commit export inspect help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
