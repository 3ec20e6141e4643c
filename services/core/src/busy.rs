//! Busy marks: an id (a sandbox being created, claimed or released) is
//! marked busy while a guard lives, so background work (a node resync, the
//! node agent's sweep) leaves it alone. One guard for every owner of such
//! a set; the owner says what marking means under its own lock.

/// Something that keeps a set of busy ids.
pub trait MarkBusy {
    /// Add `id` to the busy set.
    fn mark(&self, id: &str);
    /// Take `id` out of the busy set.
    fn unmark(&self, id: &str);
}

/// `id` marked busy in `owner` until dropped.
#[must_use = "the id is busy only while the guard lives"]
pub struct Busy<'a, M: MarkBusy + ?Sized> {
    owner: &'a M,
    id: String,
}

impl<'a, M: MarkBusy + ?Sized> Busy<'a, M> {
    /// Mark `id` busy.
    pub fn mark(owner: &'a M, id: &str) -> Self {
        owner.mark(id);
        Self::adopt(owner, id.to_string())
    }

    /// Guard an id the caller already marked (under its own lock, together
    /// with other changes).
    pub fn adopt(owner: &'a M, id: String) -> Self {
        Busy { owner, id }
    }
}

impl<M: MarkBusy + ?Sized> Drop for Busy<'_, M> {
    fn drop(&mut self) {
        self.owner.unmark(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, collections::BTreeSet};

    use super::*;

    #[derive(Default)]
    struct Set(RefCell<BTreeSet<String>>, RefCell<Vec<String>>);

    impl MarkBusy for Set {
        fn mark(&self, id: &str) {
            self.0.borrow_mut().insert(id.into());
        }
        fn unmark(&self, id: &str) {
            self.0.borrow_mut().remove(id);
            self.1.borrow_mut().push(id.into());
        }
    }

    #[test]
    fn an_id_is_busy_while_its_guard_lives() {
        let s = Set::default();
        {
            let _a = Busy::mark(&s, "a");
            s.0.borrow_mut().insert("b".into());
            let _b = Busy::adopt(&s, "b".into());
            assert_eq!(s.0.borrow().len(), 2);
        }
        assert!(s.0.borrow().is_empty());
        assert_eq!(*s.1.borrow(), ["b", "a"], "unmarked once each, on drop");
    }
}
