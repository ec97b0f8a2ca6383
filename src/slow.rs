//! A hint from code about to block for long (a fetch from a remote backend) to the thread's
//! owner: a FUSE worker ([`crate::daemon::serving`]) then makes sure another worker reads the
//! next request meanwhile. Threads that nobody set up to listen ignore it.

use std::cell::RefCell;

thread_local! {
    static LISTENER: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
}

/// Call `f` whenever code on this thread says it is about to block for long.
pub fn listen(f: impl Fn() + 'static) {
    LISTENER.with(|l| *l.borrow_mut() = Some(Box::new(f)));
}

/// This thread is about to block for long.
pub fn ahead() {
    LISTENER.with(|l| {
        if let Some(f) = l.borrow().as_ref() {
            f()
        }
    });
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    #[test]
    fn only_the_listening_thread_hears() {
        let heard = Rc::new(std::cell::Cell::new(0));
        let h = heard.clone();
        super::listen(move || h.set(h.get() + 1));
        super::ahead();
        super::ahead();
        std::thread::spawn(super::ahead).join().unwrap();
        assert_eq!(heard.get(), 2);
    }
}
