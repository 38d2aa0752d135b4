//! Fault injection, for tests: makes one thread of one deployment panic at a
//! chosen point, so that a test can see the panic caught, the deployment
//! fail and start again (see [`super::DeploymentState::Failed`]).
//!
//! Only with the `fault-injection` feature, which the end-to-end tests turn
//! on; without it [`point`] is empty and nothing can arm it.

/// Where a fault can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// The deployment's consumer thread, once per poll.
    Consumer,
    /// A worker thread, before it runs a batch.
    Worker,
    /// The producer's delivery callback.
    Delivery,
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::Site;

    static ANY: AtomicBool = AtomicBool::new(false);
    static ARMED: Mutex<Vec<(String, Site)>> = Mutex::new(Vec::new());

    /// The next time `site` of `deployment` passes its point, it panics: once.
    pub fn arm(deployment: &str, site: Site) {
        super::super::lock(&ARMED).push((deployment.to_owned(), site));
        ANY.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take(deployment: &str, site: Site) -> bool {
        if !ANY.load(Ordering::Relaxed) {
            return false;
        }
        let mut armed = super::super::lock(&ARMED);
        match armed
            .iter()
            .position(|(d, s)| d == deployment && *s == site)
        {
            Some(i) => {
                armed.remove(i);
                ANY.store(!armed.is_empty(), Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use armed::arm;

/// A point where a fault may be injected.
#[inline]
pub(crate) fn point(deployment: &str, site: Site) {
    #[cfg(feature = "fault-injection")]
    if armed::take(deployment, site) {
        panic!("a fault injected by a test: {site:?} of deployment {deployment:?}");
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (deployment, site);
}
