//! In-pod mode: the node proxy serves each ambient pod of its node from
//! inside the pod's network namespace, which the node agent hands it over
//! ZDS.

pub mod netns;
pub mod pods;
pub mod sockets;
