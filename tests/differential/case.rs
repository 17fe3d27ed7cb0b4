//! Cases: the entries of each layer and the operations, printed as a script ([`Case`]'s
//! `Display`) and read back ([`Case::parse`]), so that a minimized failure can be pinned.

use std::fmt;

/// One object of a generated layer, created in order (parents before children).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        opaque: bool,
        xattr: Option<(String, String)>,
    },
    File {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
        data: String,
        xattr: Option<(String, String)>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Whiteout {
        path: String,
    },
    /// Another name of regular file `target` of the same layer (a hard link).
    HardLink {
        path: String,
        target: String,
    },
}

impl Entry {
    pub(crate) fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::Whiteout { path }
            | Entry::HardLink { path, .. } => path,
        }
    }
}

pub(crate) fn word_or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

pub(crate) fn undash(s: &str) -> String {
    if s == "-" {
        String::new()
    } else {
        s.to_string()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let xa = |x: &Option<(String, String)>| match x {
            Some((k, v)) => format!(" {k}={v}"),
            None => String::new(),
        };
        match self {
            Entry::Dir {
                path,
                mode,
                uid,
                gid,
                opaque,
                xattr,
            } => write!(
                f,
                "dir {path} {mode:04o} {uid}:{gid}{}{}",
                if *opaque { " opaque" } else { "" },
                xa(xattr)
            ),
            Entry::File {
                path,
                mode,
                uid,
                gid,
                data,
                xattr,
            } => write!(
                f,
                "file {path} {mode:04o} {uid}:{gid} {}{}",
                word_or_dash(data),
                xa(xattr)
            ),
            Entry::Symlink { path, target } => write!(f, "symlink {path} {target}"),
            Entry::Whiteout { path } => write!(f, "whiteout {path}"),
            Entry::HardLink { path, target } => write!(f, "link {path} {target}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RenameKind {
    Plain,
    NoReplace,
    Exchange,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Create {
        path: String,
        mode: u32,
        excl: bool,
    },
    Write {
        path: String,
        off: u64,
        data: String,
    },
    Append {
        path: String,
        data: String,
    },
    Truncate {
        path: String,
        len: u64,
    },
    OpenTrunc {
        path: String,
    },
    OpenWrite {
        path: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        kind: RenameKind,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    Utimes {
        path: String,
        atime: i64,
        mtime: i64,
        nofollow: bool,
    },
    Touch {
        path: String,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
        flag: u8,
    },
    GetXattr {
        path: String,
        name: String,
    },
    RmXattr {
        path: String,
        name: String,
    },
    Stat {
        path: String,
    },
    Ls {
        path: String,
    },
    Read {
        path: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nf = |b: bool| if b { " nofollow" } else { "" };
        match self {
            Op::Create { path, mode, excl } => write!(
                f,
                "create {path} {mode:04o}{}",
                if *excl { " excl" } else { "" }
            ),
            Op::Write { path, off, data } => write!(f, "write {path} {off} {data}"),
            Op::Append { path, data } => write!(f, "append {path} {data}"),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::OpenTrunc { path } => write!(f, "opentrunc {path}"),
            Op::OpenWrite { path } => write!(f, "openwrite {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:04o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Rename { from, to, kind } => write!(
                f,
                "rename {from} {to}{}",
                match kind {
                    RenameKind::Plain => "",
                    RenameKind::NoReplace => " noreplace",
                    RenameKind::Exchange => " exchange",
                }
            ),
            Op::Link { from, to } => write!(f, "link {from} {to}"),
            Op::Symlink { path, target } => write!(f, "symlink {path} {target}"),
            Op::Chmod { path, mode } => write!(f, "chmod {path} {mode:04o}"),
            Op::Chown {
                path,
                uid,
                gid,
                nofollow,
            } => write!(f, "chown {path} {uid}:{gid}{}", nf(*nofollow)),
            Op::Utimes {
                path,
                atime,
                mtime,
                nofollow,
            } => write!(f, "utimes {path} {atime} {mtime}{}", nf(*nofollow)),
            Op::Touch { path } => write!(f, "touch {path}"),
            Op::SetXattr {
                path,
                name,
                value,
                flag,
            } => write!(
                f,
                "setxattr {path} {name} {value}{}",
                match flag {
                    1 => " create",
                    2 => " replace",
                    _ => "",
                }
            ),
            Op::GetXattr { path, name } => write!(f, "getxattr {path} {name}"),
            Op::RmXattr { path, name } => write!(f, "rmxattr {path} {name}"),
            Op::Stat { path } => write!(f, "stat {path}"),
            Op::Ls { path } => write!(f, "ls {path}"),
            Op::Read { path } => write!(f, "read {path}"),
        }
    }
}

impl Op {
    /// The paths the operation names.
    pub(crate) fn paths(&self) -> Vec<&str> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Create { path, .. }
            | Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::OpenTrunc { path }
            | Op::OpenWrite { path }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimes { path, .. }
            | Op::Touch { path }
            | Op::SetXattr { path, .. }
            | Op::GetXattr { path, .. }
            | Op::RmXattr { path, .. }
            | Op::Stat { path }
            | Op::Ls { path }
            | Op::Read { path } => vec![path],
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Case {
    /// Pre-populated upper layer (often empty).
    pub(crate) upper: Vec<Entry>,
    /// Lower layers, topmost first; never empty.
    pub(crate) lowers: Vec<Vec<Entry>>,
    pub(crate) ops: Vec<Op>,
    /// Overlay features both implementations mount with (`-o` options such as
    /// `redirect_dir=on`); empty for the defaults.
    pub(crate) features: String,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.features.is_empty() {
            writeln!(f, "features {}", self.features)?;
        }
        writeln!(f, "upper")?;
        for e in &self.upper {
            writeln!(f, "  {e}")?;
        }
        for l in &self.lowers {
            writeln!(f, "lower")?;
            for e in l {
                writeln!(f, "  {e}")?;
            }
        }
        writeln!(f, "ops")?;
        for o in &self.ops {
            writeln!(f, "  {o}")?;
        }
        Ok(())
    }
}

pub(crate) fn parse_mode(s: &str) -> u32 {
    u32::from_str_radix(s, 8).unwrap_or_else(|_| panic!("bad mode {s}"))
}

pub(crate) fn parse_owner(s: &str) -> (u32, u32) {
    let (u, g) = s.split_once(':').unwrap_or_else(|| panic!("bad owner {s}"));
    (u.parse().unwrap(), g.parse().unwrap())
}

pub(crate) fn parse_xattr(s: Option<&&str>) -> Option<(String, String)> {
    s.and_then(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
}

impl Case {
    /// Reads the format [`Case`]'s `Display` writes: an optional `features` line,
    /// `upper`/`lower` sections of entries, then `ops`. Blank lines and `#` comments are
    /// ignored.
    pub(crate) fn parse(text: &str) -> Case {
        enum Sec {
            None,
            Upper,
            Lower,
            Ops,
        }
        let mut c = Case::default();
        let mut sec = Sec::None;
        for raw in text.lines() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let t: Vec<&str> = line.split_whitespace().collect();
            match t[0] {
                "features" if t.len() == 2 => {
                    c.features = t[1].to_string();
                    continue;
                }
                "upper" if t.len() == 1 => {
                    sec = Sec::Upper;
                    continue;
                }
                "lower" if t.len() == 1 => {
                    sec = Sec::Lower;
                    c.lowers.push(Vec::new());
                    continue;
                }
                "ops" if t.len() == 1 => {
                    sec = Sec::Ops;
                    continue;
                }
                _ => {}
            }
            match sec {
                Sec::None => panic!("entry before a section: {line}"),
                Sec::Upper | Sec::Lower => {
                    let e = match t[0] {
                        "dir" => {
                            let (uid, gid) = parse_owner(t[3]);
                            let opaque = t.get(4) == Some(&"opaque");
                            Entry::Dir {
                                path: t[1].into(),
                                mode: parse_mode(t[2]),
                                uid,
                                gid,
                                opaque,
                                xattr: parse_xattr(t.get(if opaque { 5 } else { 4 })),
                            }
                        }
                        "file" => {
                            let (uid, gid) = parse_owner(t[3]);
                            Entry::File {
                                path: t[1].into(),
                                mode: parse_mode(t[2]),
                                uid,
                                gid,
                                data: undash(t[4]),
                                xattr: parse_xattr(t.get(5)),
                            }
                        }
                        "symlink" => Entry::Symlink {
                            path: t[1].into(),
                            target: t[2].into(),
                        },
                        "whiteout" => Entry::Whiteout { path: t[1].into() },
                        "link" => Entry::HardLink {
                            path: t[1].into(),
                            target: t[2].into(),
                        },
                        _ => panic!("bad entry: {line}"),
                    };
                    match sec {
                        Sec::Upper => c.upper.push(e),
                        _ => c.lowers.last_mut().unwrap().push(e),
                    }
                }
                Sec::Ops => c.ops.push(parse_op(&t)),
            }
        }
        if c.lowers.is_empty() {
            c.lowers.push(Vec::new());
        }
        c
    }
}

pub(crate) fn parse_op(t: &[&str]) -> Op {
    let s = |i: usize| t[i].to_string();
    let has = |w: &str| t.iter().skip(1).any(|x| *x == w);
    match t[0] {
        "create" => Op::Create {
            path: s(1),
            mode: parse_mode(t[2]),
            excl: has("excl"),
        },
        "write" => Op::Write {
            path: s(1),
            off: t[2].parse().unwrap(),
            data: s(3),
        },
        "append" => Op::Append {
            path: s(1),
            data: s(2),
        },
        "truncate" => Op::Truncate {
            path: s(1),
            len: t[2].parse().unwrap(),
        },
        "opentrunc" => Op::OpenTrunc { path: s(1) },
        "openwrite" => Op::OpenWrite { path: s(1) },
        "unlink" => Op::Unlink { path: s(1) },
        "mkdir" => Op::Mkdir {
            path: s(1),
            mode: parse_mode(t[2]),
        },
        "rmdir" => Op::Rmdir { path: s(1) },
        "rename" => Op::Rename {
            from: s(1),
            to: s(2),
            kind: if has("noreplace") {
                RenameKind::NoReplace
            } else if has("exchange") {
                RenameKind::Exchange
            } else {
                RenameKind::Plain
            },
        },
        "link" => Op::Link {
            from: s(1),
            to: s(2),
        },
        "symlink" => Op::Symlink {
            path: s(1),
            target: s(2),
        },
        "chmod" => Op::Chmod {
            path: s(1),
            mode: parse_mode(t[2]),
        },
        "chown" => {
            let (uid, gid) = parse_owner(t[2]);
            Op::Chown {
                path: s(1),
                uid,
                gid,
                nofollow: has("nofollow"),
            }
        }
        "utimes" => Op::Utimes {
            path: s(1),
            atime: t[2].parse().unwrap(),
            mtime: t[3].parse().unwrap(),
            nofollow: has("nofollow"),
        },
        "touch" => Op::Touch { path: s(1) },
        "setxattr" => Op::SetXattr {
            path: s(1),
            name: s(2),
            value: s(3),
            flag: if has("create") {
                1
            } else if has("replace") {
                2
            } else {
                0
            },
        },
        "getxattr" => Op::GetXattr {
            path: s(1),
            name: s(2),
        },
        "rmxattr" => Op::RmXattr {
            path: s(1),
            name: s(2),
        },
        "stat" => Op::Stat { path: s(1) },
        "ls" => Op::Ls { path: s(1) },
        "read" => Op::Read { path: s(1) },
        other => panic!("bad op {other}"),
    }
}
