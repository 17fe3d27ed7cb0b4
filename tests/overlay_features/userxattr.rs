//! `-o userxattr` (issue 18 item 7).
