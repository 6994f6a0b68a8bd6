//! ProxyConfig rules.

use crate::networking::proxy_config::ProxyConfig;
use crate::path::FieldPath;
use crate::validation::Report;
use crate::validation::shared;

pub fn validate(pc: &ProxyConfig, at: &FieldPath, report: &mut Report) {
    shared::workload_selector(pc.selector.as_ref(), &at.field("selector"), report);
    if pc.concurrency.is_some_and(|c| c < 0) {
        report.error(&at.field("concurrency"), "in body should be greater than or equal to 0: concurrency must be greater than or equal to 0");
    }
    for (name, value) in &pc.environment_variables {
        if value.len() > 2048 {
            report.error(
                &at.field("environmentVariables").field(name),
                "must have at most 2048 characters",
            );
        }
    }
}
