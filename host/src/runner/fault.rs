//! Fault injection, for tests: makes one thread of one deployment panic at a
//! chosen point, so that a test can see the panic caught, the deployment
//! fail and start again (see [`super::DeploymentState::Failed`]); or stall
//! there for a while, as a process paused or starved would.
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
    use std::time::Duration;

    use super::Site;

    static ANY: AtomicBool = AtomicBool::new(false);
    /// (deployment, site, `None` to panic or `Some` to stall that long).
    static ARMED: Mutex<Vec<(String, Site, Option<Duration>)>> = Mutex::new(Vec::new());

    /// The next time `site` of `deployment` passes its point, it panics: once.
    pub fn arm(deployment: &str, site: Site) {
        push(deployment, site, None);
    }

    /// The next time `site` of `deployment` passes its point, it stalls for
    /// `how_long`: once.
    pub fn arm_stall(deployment: &str, site: Site, how_long: Duration) {
        push(deployment, site, Some(how_long));
    }

    /// Whether a fault armed for `site` of `deployment` is still to come:
    /// false once a thread has passed the point and taken it.
    pub fn is_armed(deployment: &str, site: Site) -> bool {
        super::super::lock(&ARMED)
            .iter()
            .any(|(d, s, _)| d == deployment && *s == site)
    }

    fn push(deployment: &str, site: Site, stall: Option<Duration>) {
        super::super::lock(&ARMED).push((deployment.to_owned(), site, stall));
        ANY.store(true, Ordering::SeqCst);
    }

    /// `Some(None)`: panic; `Some(Some(d))`: stall for `d`.
    pub(crate) fn take(deployment: &str, site: Site) -> Option<Option<Duration>> {
        if !ANY.load(Ordering::Relaxed) {
            return None;
        }
        let mut armed = super::super::lock(&ARMED);
        let i = armed
            .iter()
            .position(|(d, s, _)| d == deployment && *s == site)?;
        let (_, _, stall) = armed.remove(i);
        ANY.store(!armed.is_empty(), Ordering::SeqCst);
        Some(stall)
    }
}

#[cfg(feature = "fault-injection")]
pub use armed::{arm, arm_stall, is_armed};

/// A point where a fault may be injected.
#[inline]
pub(crate) fn point(deployment: &str, site: Site) {
    #[cfg(feature = "fault-injection")]
    match armed::take(deployment, site) {
        Some(None) => panic!("a fault injected by a test: {site:?} of deployment {deployment:?}"),
        Some(Some(stall)) => std::thread::sleep(stall),
        None => {}
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (deployment, site);
}
