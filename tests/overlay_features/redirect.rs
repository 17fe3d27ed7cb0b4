//! `redirect_dir` (issue 18 item 1).
