//! PeerAuthentication rules.

use crate::path::FieldPath;
use crate::security::peer_authentication::PeerAuthentication;
use crate::validation::Report;
use crate::validation::shared;

pub fn validate(pa: &PeerAuthentication, at: &FieldPath, report: &mut Report) {
    shared::workload_selector(pa.selector.as_ref(), &at.field("selector"), report);
    let Some(ports) = &pa.port_level_mtls else {
        return;
    };
    let here = at.field("portLevelMtls");
    if ports.is_empty() {
        report.error(&here, "in body should have at least 1 properties: port level mTLS, if defined, must have at least one element");
    }
    let has_labels = pa
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty());
    if !has_labels && !ports.is_empty() {
        report.error(&here, "portLevelMtls requires selector: mesh/namespace peer authentication cannot have port level mTLS");
    }
    for key in ports.keys() {
        match key.parse::<i64>() {
            Err(_) => report.error(
                &here.field(key),
                format!(
                    "type conversion error from string {key:?} to int: port keys are port numbers"
                ),
            ),
            Ok(port) if !(1..=65535).contains(&port) => report.error(
                &here.field(key),
                format!("port must be between 1-65535, got {port}"),
            ),
            Ok(_) => {}
        }
    }
}
