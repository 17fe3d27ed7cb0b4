//! Test-only hooks: a closure a unit test arms on its own thread and the code under test
//! runs once at a chosen point, so that a race can be reproduced deterministically.

use std::cell::RefCell;

/// One hook point (kept in a `thread_local!`).
#[derive(Default)]
pub(crate) struct Hook(RefCell<Option<Box<dyn FnOnce()>>>);

impl Hook {
    /// Arms the hook: `f` runs at the next [`Hook::fire`] on this thread.
    pub(crate) fn arm(&self, f: impl FnOnce() + 'static) {
        *self.0.borrow_mut() = Some(Box::new(f));
    }

    /// Runs the armed closure, if any (once).
    pub(crate) fn fire(&self) {
        let f = self.0.borrow_mut().take();
        if let Some(f) = f {
            f();
        }
    }
}
