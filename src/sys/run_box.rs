//! A box whose value can run while the box stays where it is. The event loop
//! calls a source's callback with the loop itself, which owns the box, as an
//! argument: meanwhile the callback may ask the loop for the source (refused)
//! or drop it (the memory then lives until the call returns). No unsafe code
//! elsewhere has to reason about it.

use super::*;

/// The allocation behind a [`RunBox`]: its state beside the value.
pub(crate) struct RunCell<T: ?Sized> {
    /// `RUNNING` while a [`Run`] of the value exists; `ORPHANED` once the
    /// box was dropped during a run (the run then frees the cell).
    state: Cell<u8>,
    value: UnsafeCell<T>,
}

const RUNNING: u8 = 1;
const ORPHANED: u8 = 2;

impl<T> RunCell<T> {
    /// A cell to make a [`RunBox`] of (after coercing it to `Box<RunCell<dyn
    /// Trait>>` if need be).
    pub(crate) fn boxed(value: T) -> Box<RunCell<T>> {
        Box::new(RunCell {
            state: Cell::new(0),
            value: UnsafeCell::new(value),
        })
    }
}

/// Owns a [`RunCell`] as a `Box` would. [`run`](RunBox::run) hands out the
/// value mutably without borrowing the box, so the box stays reachable (to
/// be refused, or dropped) while the value runs.
pub(crate) struct RunBox<T: ?Sized> {
    cell: NonNull<RunCell<T>>,
    /// The value's place in the cell, computed once (for a `dyn` value its
    /// offset depends on the alignment the vtable gives).
    value: NonNull<T>,
    _owns: PhantomData<Box<RunCell<T>>>,
}

impl<T: ?Sized> RunBox<T> {
    pub(crate) fn new(cell: Box<RunCell<T>>) -> RunBox<T> {
        let cell = NonNull::from(Box::leak(cell));
        // SAFETY: `cell` is allocated and initialised; the projection makes
        // no reference.
        let value = unsafe { UnsafeCell::raw_get(ptr::addr_of!((*cell.as_ptr()).value)) };
        RunBox {
            cell,
            // SAFETY: a field of a non-null allocation is not null.
            value: unsafe { NonNull::new_unchecked(value) },
            _owns: PhantomData,
        }
    }

    /// The state, reached without a reference to the value.
    #[inline]
    fn state(&self) -> &Cell<u8> {
        // SAFETY: the cell is allocated for as long as this box exists (only
        // `Drop` of the box or of a `Run` frees it, and a `Run` does only
        // after the box was dropped); the projection creates no reference
        // to `value`, which a `Run` may be lending out mutably.
        unsafe { &*ptr::addr_of!((*self.cell.as_ptr()).state) }
    }

    /// Whether a [`Run`] of the value exists.
    #[inline]
    pub(crate) fn is_running(&self) -> bool {
        self.state().get() != 0
    }

    /// The value, unless it is running.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        if self.is_running() {
            return None;
        }
        // SAFETY: no `Run` exists, and none can be made while `self` is
        // borrowed (`run` takes `&mut self`): nothing else refers to the
        // value. The cell is allocated (see `state`).
        Some(unsafe { self.value.as_ref() })
    }

    /// The value mutably, unless it is running.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> Option<&mut T> {
        if self.is_running() {
            return None;
        }
        // SAFETY: as in `get`, and `self` is borrowed mutably, so this is
        // the only reference.
        Some(unsafe { self.value.as_mut() })
    }

    /// Starts a run: the value, mutably, through a handle that does not
    /// borrow the box. `None` if a run is under way already.
    #[inline]
    pub(crate) fn run(&mut self) -> Option<Run<T>> {
        if self.is_running() {
            return None;
        }
        self.state().set(RUNNING);
        Some(Run {
            cell: self.cell,
            value: self.value,
        })
    }
}

impl<T: ?Sized> Drop for RunBox<T> {
    fn drop(&mut self) {
        if self.is_running() {
            self.state().set(RUNNING | ORPHANED);
            return; // the `Run` frees the cell when it ends
        }
        // SAFETY: no `Run` exists and none can be made any more: this box
        // owns the cell alone, and it came from `Box::leak`.
        drop(unsafe { Box::from_raw(self.cell.as_ptr()) });
    }
}

/// A run of a [`RunBox`]'s value; the run ends when it is dropped, which
/// also frees the cell if the box was dropped meanwhile.
pub(crate) struct Run<T: ?Sized> {
    cell: NonNull<RunCell<T>>,
    value: NonNull<T>,
}

impl<T: ?Sized> Run<T> {
    /// The value. Only this run reaches it: the box refuses while it lasts.
    #[inline]
    pub(crate) fn get_mut(&mut self) -> &mut T {
        // SAFETY: the cell stays allocated while a run exists (a box dropped
        // meanwhile leaves it to the run to free); the box hands out no
        // reference to the value while the state says `RUNNING`, and there
        // is one run at a time (`run` checks it), so this is the only
        // reference, for as long as `self` is borrowed.
        unsafe { self.value.as_mut() }
    }
}

impl<T: ?Sized> Drop for Run<T> {
    #[inline]
    fn drop(&mut self) {
        let cell = self.cell.as_ptr();
        // SAFETY: allocated (see `get_mut`); only the state is touched here,
        // and no reference to the value outlives this run.
        let state = unsafe { &*ptr::addr_of!((*cell).state) };
        if state.replace(0) & ORPHANED != 0 {
            // SAFETY: the box is gone and this run is over: nothing refers
            // to the cell any more; it came from `Box::leak`.
            drop(unsafe { Box::from_raw(cell) });
        }
    }
}
