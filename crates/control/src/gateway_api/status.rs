//! The status the Gateway API asks a controller to write back: conditions
//! with Istio's types, reasons and messages, per Gateway, listener and route
//! parent. Transition times are stamped by whoever writes the status, since
//! only it knows what was there before.

use serde_json::{Value, json};

use oxmesh_config::kind::Kind;

/// One condition, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted`, `Programmed`, ...
    pub r#type: &'static str,
    /// `True` or `False`.
    pub status: bool,
    pub reason: String,
    pub message: String,
}

impl Condition {
    /// A condition whose status is `True`.
    pub fn holds(r#type: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            r#type,
            status: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// A condition whose status is `False`.
    pub fn fails(r#type: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            status: false,
            ..Self::holds(r#type, reason, message)
        }
    }
}

/// A Gateway's or a route's whole status, as this controller sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStatus {
    pub kind: Kind,
    /// The `apiVersion` the object was read at, which its status is written
    /// at too.
    pub api_version: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.generation`, reported as each condition's `observedGeneration`.
    pub generation: i64,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Gateway {
        /// `(type, value)`: `IPAddress` or `Hostname`.
        addresses: Vec<(&'static str, String)>,
        conditions: Vec<Condition>,
        listeners: Vec<ListenerStatus>,
    },
    Route {
        parents: Vec<ParentStatus>,
    },
    Class {
        conditions: Vec<Condition>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub attached_routes: usize,
    pub supported_kinds: Vec<&'static str>,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParentStatus {
    /// The route's `parentRefs` entry as written, with its defaults filled.
    pub reference: Value,
    pub conditions: Vec<Condition>,
}

impl ObjectStatus {
    /// The `status` object, as the API server would store it. A condition
    /// keeps its `lastTransitionTime` from `previous` while its status is
    /// unchanged; otherwise it takes `now` (RFC 3339).
    pub fn to_json(&self, previous: Option<&Value>, now: &str) -> Value {
        let conditions = |list: &[Condition], before: Option<&Value>| -> Value {
            let stamped: Vec<Value> = list
                .iter()
                .map(|c| self.condition(c, before, now))
                .collect();
            Value::Array(stamped)
        };
        match &self.body {
            Body::Gateway {
                addresses,
                conditions: own,
                listeners,
            } => {
                let listeners: Vec<Value> = listeners
                    .iter()
                    .map(|l| {
                        let before = previous
                            .and_then(|p| p["listeners"].as_array())
                            .and_then(|ls| ls.iter().find(|b| b["name"] == l.name.as_str()))
                            .map(|b| &b["conditions"]);
                        json!({
                            "name": l.name,
                            "attachedRoutes": l.attached_routes,
                            "supportedKinds": l.supported_kinds.iter().map(|k| json!({
                                "group": super::GROUP,
                                "kind": k,
                            })).collect::<Vec<_>>(),
                            "conditions": conditions(&l.conditions, before),
                        })
                    })
                    .collect();
                let mut status = json!({
                    "conditions": conditions(own, previous.map(|p| &p["conditions"])),
                    "listeners": listeners,
                });
                if !addresses.is_empty() {
                    status["addresses"] = addresses
                        .iter()
                        .map(|(kind, value)| json!({"type": kind, "value": value}))
                        .collect();
                }
                status
            }
            Body::Class { conditions: own } => {
                json!({"conditions": conditions(own, previous.map(|p| &p["conditions"]))})
            }
            Body::Route { parents } => {
                let parents: Vec<Value> = parents
                    .iter()
                    .map(|p| {
                        let before = previous
                            .and_then(|v| v["parents"].as_array())
                            .and_then(|ps| ps.iter().find(|b| b["parentRef"] == p.reference))
                            .map(|b| &b["conditions"]);
                        json!({
                            "parentRef": p.reference,
                            "controllerName": super::CONTROLLER,
                            "conditions": conditions(&p.conditions, before),
                        })
                    })
                    .collect();
                json!({ "parents": parents })
            }
        }
    }

    fn condition(&self, c: &Condition, before: Option<&Value>, now: &str) -> Value {
        let status = if c.status { "True" } else { "False" };
        let since = before
            .and_then(Value::as_array)
            .and_then(|list| list.iter().find(|b| b["type"] == c.r#type))
            .filter(|b| b["status"] == status)
            .and_then(|b| b["lastTransitionTime"].as_str())
            .unwrap_or(now);
        json!({
            "type": c.r#type,
            "status": status,
            "reason": c.reason,
            "message": c.message,
            "observedGeneration": self.generation,
            "lastTransitionTime": since,
        })
    }
}
