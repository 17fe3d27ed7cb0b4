//! `stratafs --demo`: mount the sample layer stack shipped with the sources and show it.
//! Filled in with the sample stack.

/// Runs the demo.
pub fn run() -> Result<(), String> {
    Err("the sample layer stack is not built into this binary".into())
}
