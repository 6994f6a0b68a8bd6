//! The admission webhooks' input: any body sent to `/inject` or `/validate`
//! is answered with an AdmissionReview (a refusal saying why when it is not
//! one), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oxmesh_control::inject::Settings;
use oxmesh_control::webhook;

fuzz_target!(|data: &[u8]| {
    let settings = Settings::default();
    for path in ["/inject", "/validate"] {
        let answer = webhook::review(path, data, &settings);
        assert_eq!(answer["kind"], "AdmissionReview");
        assert!(answer["response"]["allowed"].is_boolean(), "{answer}");
    }
});
