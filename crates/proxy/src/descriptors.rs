//! The open-file limit. Every connection takes a descriptor, and the usual
//! soft limit (1,024) is far below what a busy proxy holds: past it, accept
//! fails for every client, not only for whoever opened the many connections.
//! The proxy raises it to the hard limit when it starts, as Go programs
//! (istiod, pilot-agent) do by themselves.

use std::io;

/// Raises the soft limit on open files to the hard one; returns the limit
/// now in force.
#[allow(unsafe_code)]
pub fn raise_to_hard_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_reaches_the_hard_one() {
        let now = super::raise_to_hard_limit().expect("raised");
        assert!(now >= 1_024, "{now}");
        assert_eq!(super::raise_to_hard_limit().expect("again"), now);
    }
}
