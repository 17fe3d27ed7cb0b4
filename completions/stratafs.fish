# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_stratafs_global_optspecs
    string join \n o= f d/debug h/help V/version demo
end

function __fish_stratafs_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_stratafs_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_stratafs_using_subcommand
    set -l cmd (__fish_stratafs_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c stratafs -n "__fish_stratafs_needs_command" -s o -d 'Comma-separated mount options, listed under MOUNT OPTIONS; may be repeated, and a later value wins. -oOPTS works too.' -r -f -a "lowerdir\t''
lowerdir+\t''
datadir+\t''
upperdir\t''
workdir\t''
fsync\t''
volatile\t''
timeout\t''
node_limit\t''
udba\t''
udba_watches\t''
xino\t''
ino32_t\t''
static_nlink\t''
noxattrs\t''
fsname\t''
debug\t''
log\t''
allow_other\t''
allow_root\t''
default_permissions\t''
ro\t''
rw\t''
dev\t''
nodev\t''
suid\t''
nosuid\t''
exec\t''
noexec\t''
atime\t''
noatime\t''
dirsync\t''
sync\t''
async\t''
uidmapping\t''
gidmapping\t''
squash_to_root\t''
squash_to_uid\t''
squash_to_gid\t''
xattr_permissions\t''
redirect_dir\t''
metacopy\t''
index\t''
verity\t''
writeback\t''
passthrough\t''
io_uring\t''
markers\t''
userxattr\t''
noacl\t''
threaded\t''
fast_ino\t''
plugins\t''
context\t''"
complete -c stratafs -n "__fish_stratafs_needs_command" -s f -d 'Stay in the foreground instead of detaching.'
complete -c stratafs -n "__fish_stratafs_needs_command" -s d -l debug -d 'Log every request to stderr (implies -f); RUST_LOG also selects what is logged.'
complete -c stratafs -n "__fish_stratafs_needs_command" -s h -l help -d 'Print the usage and exit 0.'
complete -c stratafs -n "__fish_stratafs_needs_command" -s V -l version -d 'Print the version and exit 0.'
complete -c stratafs -n "__fish_stratafs_needs_command" -l demo -d 'Mount the sample layer stack shipped with the sources, print the merged tree with the layer each entry comes from and what the upper layers hide, then unmount.'
complete -c stratafs -n "__fish_stratafs_needs_command" -a "stats" -d 'Show the counters and gauges of the daemon serving a mount'
complete -c stratafs -n "__fish_stratafs_needs_command" -a "refresh" -d 'Make a mount show layers changed behind its back'
complete -c stratafs -n "__fish_stratafs_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c stratafs -n "__fish_stratafs_using_subcommand stats" -l watch -d 'Print what happened in every SECONDS (rates per second, latencies of the interval) until interrupted.' -r
complete -c stratafs -n "__fish_stratafs_using_subcommand stats" -l json -d 'Print JSON instead of the table (one object per line with --watch).'
complete -c stratafs -n "__fish_stratafs_using_subcommand help; and not __fish_seen_subcommand_from stats refresh help" -f -a "stats" -d 'Show the counters and gauges of the daemon serving a mount'
complete -c stratafs -n "__fish_stratafs_using_subcommand help; and not __fish_seen_subcommand_from stats refresh help" -f -a "refresh" -d 'Make a mount show layers changed behind its back'
complete -c stratafs -n "__fish_stratafs_using_subcommand help; and not __fish_seen_subcommand_from stats refresh help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
