//! Istio's bookinfo sample, the same four services on the same paths: the
//! product page calls details and reviews; reviews v2 and v3 call ratings (v2
//! shows black stars, v3 red, v1 none). Tracing headers and the logged-in user
//! (`end-user`, from `?u=` or the `user` cookie) are passed along, so routing on
//! them works as in Istio's tasks.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::server::{get, response};

pub const PORT: u16 = 9080;

/// Headers the apps pass on to the services they call.
const PROPAGATED: [&str; 13] = [
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "x-cloud-trace-context",
    "end-user",
    "user-agent",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ProductPage,
    Details,
    Reviews(ReviewsVersion),
    Ratings,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReviewsVersion {
    V1,
    V2,
    V3,
}

impl Role {
    /// `productpage`, `details`, `ratings`, or `reviews` with `v1`..`v3`.
    pub fn parse(name: &str, version: &str) -> Option<Self> {
        Some(match name {
            "productpage" => Role::ProductPage,
            "details" => Role::Details,
            "ratings" => Role::Ratings,
            "reviews" => Role::Reviews(match version {
                "v2" => ReviewsVersion::V2,
                "v3" => ReviewsVersion::V3,
                _ => ReviewsVersion::V1,
            }),
            _ => return None,
        })
    }
}

pub async fn run(role: Role, port: u16) -> std::io::Result<()> {
    crate::serve(port, move |req, _| handle(role, req)).await
}

async fn handle(role: Role, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return response(200, "text/plain", "healthy\n");
    }
    let forwarded = propagate(&req);
    match role {
        Role::Details => match id_after(&path, "/details/") {
            Some(id) => response(200, "application/json", details(id).to_string()),
            None => not_found(),
        },
        Role::Ratings => match id_after(&path, "/ratings/") {
            Some(id) => response(200, "application/json", ratings(id).to_string()),
            None => not_found(),
        },
        Role::Reviews(version) => match id_after(&path, "/reviews/") {
            Some(id) => response(
                200,
                "application/json",
                reviews(id, version, &forwarded).await.to_string(),
            ),
            None => not_found(),
        },
        Role::ProductPage => product_page(&path, req, forwarded).await,
    }
}

fn not_found() -> Response<Full<Bytes>> {
    response(404, "text/plain", "not found\n")
}

fn id_after(path: &str, prefix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?.parse().ok()
}

fn propagate(req: &Request<Incoming>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in PROPAGATED {
        if let Some(v) = req.headers().get(name) {
            out.insert(HeaderName::from_static(name), v.clone());
        }
    }
    out
}

fn details(id: u32) -> Value {
    json!({
        "id": id, "author": "William Shakespeare", "year": 1595, "type": "paperback",
        "pages": 200, "publisher": "PublisherA", "language": "English",
        "ISBN-10": "1234567890", "ISBN-13": "123-1234567890",
    })
}

fn ratings(id: u32) -> Value {
    json!({ "id": id, "ratings": { "Reviewer1": 5, "Reviewer2": 4 } })
}

async fn reviews(id: u32, version: ReviewsVersion, headers: &HeaderMap) -> Value {
    let pod = std::env::var("HOSTNAME").unwrap_or_default();
    let texts = [
        (
            "Reviewer1",
            "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
        ),
        (
            "Reviewer2",
            "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
        ),
    ];
    let color = match version {
        ReviewsVersion::V1 => None,
        ReviewsVersion::V2 => Some("black"),
        ReviewsVersion::V3 => Some("red"),
    };
    let stars = match color {
        Some(_) => match get("ratings", PORT, &format!("/ratings/{id}"), headers).await {
            Ok((200, body)) => serde_json::from_slice::<Value>(&body).ok(),
            _ => None,
        },
        None => None,
    };
    let reviews: Vec<Value> = texts
        .iter()
        .map(|(reviewer, text)| {
            let mut r = json!({ "reviewer": reviewer, "text": text });
            if let Some(color) = color {
                r["rating"] = match stars.as_ref().and_then(|s| s["ratings"][reviewer].as_u64()) {
                    Some(n) => json!({ "stars": n, "color": color }),
                    None => json!({ "error": "Ratings service is currently unavailable" }),
                };
            }
            r
        })
        .collect();
    json!({ "id": id.to_string(), "podname": pod, "clustername": "null", "reviews": reviews })
}

async fn product_page(
    path: &str,
    req: Request<Incoming>,
    mut headers: HeaderMap,
) -> Response<Full<Bytes>> {
    match path {
        // Bookinfo's sign-in: the name becomes the session's user, sent on as
        // `end-user` (the password is not checked, as in Istio's sample).
        "/login" if req.method() == http::Method::POST => {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let form = String::from_utf8_lossy(&body);
            let user = form
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "username")
                .map(|(_, v)| v.to_owned())
                .unwrap_or_default();
            signed(&format!("user={user}; Path=/"))
        }
        "/logout" => signed("user=; Path=/; Max-Age=0"),
        "/" | "/index.html" => response(
            200,
            "text/html",
            "<html><body><h1>Bookinfo</h1><p><a href=\"/productpage\">The Comedy of Errors</a> \
             (<a href=\"/productpage?u=normal\">normal user</a>, \
             <a href=\"/productpage?u=jason\">jason</a>)</p></body></html>\n",
        ),
        "/api/v1/products" => response(
            200,
            "application/json",
            json!([{ "id": 0, "title": "The Comedy of Errors",
                     "descriptionHtml": "Wikipedia Summary: The Comedy of Errors is one of William Shakespeare's early plays." }])
            .to_string(),
        ),
        "/productpage" => {
            let user = user(&req);
            if let Some(user) = &user
                && let Ok(v) = http::HeaderValue::from_str(user)
            {
                headers.insert(HeaderName::from_static("end-user"), v);
            }
            let details = fetch_json("details", "/details/0", &headers).await;
            let reviews = fetch_json("reviews", "/reviews/0", &headers).await;
            response(200, "text/html", render(details.as_ref(), reviews.as_ref(), user.as_deref()))
        }
        _ => not_found(),
    }
}

/// Back to the product page with the session cookie set (or cleared).
fn signed(cookie: &str) -> Response<Full<Bytes>> {
    let mut r = response(302, "text/plain", "");
    r.headers_mut().insert(
        http::header::LOCATION,
        http::HeaderValue::from_static("/productpage"),
    );
    if let Ok(v) = http::HeaderValue::from_str(cookie) {
        r.headers_mut().insert(http::header::SET_COOKIE, v);
    }
    r
}

/// The logged-in user: `?u=<name>`, else the `user` cookie.
fn user(req: &Request<Incoming>) -> Option<String> {
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "u")
            .map(|(_, v)| v.to_owned())
    });
    from_query.or_else(|| {
        req.headers()
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == "user")
            .map(|(_, v)| v.to_owned())
    })
}

async fn fetch_json(service: &str, path: &str, headers: &HeaderMap) -> Option<Value> {
    match get(service, PORT, path, headers).await {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        Ok((status, _)) => {
            tracing::warn!(service, status, "call failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "call failed");
            None
        }
    }
}

fn render(details: Option<&Value>, reviews: Option<&Value>, user: Option<&str>) -> String {
    let mut html = String::from("<html><head><title>Simple Bookstore App</title></head><body>\n");
    html.push_str("<h2>The Comedy of Errors</h2>\n");
    match user {
        Some(user) if !user.is_empty() => html.push_str(&format!(
            "<p>Signed in as {user} <a href=\"/logout\">sign out</a></p>\n"
        )),
        _ => html.push_str(
            "<form method=\"post\" action=\"/login\">User <input name=\"username\"> \
             Password <input name=\"passwd\" type=\"password\"> <button>Sign in</button></form>\n",
        ),
    }
    match details {
        Some(d) => html.push_str(&format!(
            "<h4>Book Details</h4><dl><dt>Type:</dt><dd>{}</dd><dt>Pages:</dt><dd>{}</dd><dt>Publisher:</dt><dd>{}</dd><dt>Language:</dt><dd>{}</dd><dt>ISBN-10:</dt><dd>{}</dd><dt>ISBN-13:</dt><dd>{}</dd></dl>\n",
            d["type"].as_str().unwrap_or_default(), d["pages"], d["publisher"].as_str().unwrap_or_default(),
            d["language"].as_str().unwrap_or_default(), d["ISBN-10"].as_str().unwrap_or_default(), d["ISBN-13"].as_str().unwrap_or_default(),
        )),
        None => html.push_str("<h4>Error fetching product details!</h4><p>Sorry, product details are currently unavailable for this book.</p>\n"),
    }
    match reviews {
        Some(r) => {
            html.push_str("<h4>Book Reviews</h4>\n");
            for review in r["reviews"].as_array().into_iter().flatten() {
                html.push_str(&format!(
                    "<blockquote><p>{}</p><small>{}</small>",
                    review["text"].as_str().unwrap_or_default(),
                    review["reviewer"].as_str().unwrap_or_default()
                ));
                let rating = &review["rating"];
                if let Some(n) = rating["stars"].as_u64() {
                    let color = rating["color"].as_str().unwrap_or("black");
                    let stars: String = "★".repeat(n as usize) + &"☆".repeat(5 - n.min(5) as usize);
                    html.push_str(&format!(" <font color=\"{color}\">{stars}</font>"));
                } else if let Some(e) = rating["error"].as_str() {
                    html.push_str(&format!(" <p>{e}</p>"));
                }
                html.push_str("</blockquote>\n");
            }
            html.push_str(&format!(
                "<dl><dt>Reviews served by:</dt><dd><u>{}</u></dd></dl>\n",
                r["podname"].as_str().unwrap_or_default()
            ));
        }
        None => html.push_str("<h4>Error fetching product reviews!</h4><p>Sorry, product reviews are currently unavailable for this book.</p>\n"),
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_as_images_name_them() {
        assert_eq!(
            Role::parse("reviews", "v3"),
            Some(Role::Reviews(ReviewsVersion::V3))
        );
        assert_eq!(Role::parse("productpage", "v1"), Some(Role::ProductPage));
        assert_eq!(Role::parse("mongodb", "v1"), None);
    }

    #[test]
    fn the_page_says_what_is_missing() {
        let page = render(None, None, Some("jason"));
        assert!(page.contains("Signed in as jason"));
        assert!(page.contains("product details are currently unavailable"));
        assert!(page.contains("product reviews are currently unavailable"));
        let reviews = json!({"podname": "reviews-v3-x", "reviews": [
            {"reviewer": "Reviewer1", "text": "t", "rating": {"stars": 5, "color": "red"}}]});
        let page = render(Some(&details(0)), Some(&reviews), None);
        assert!(page.contains("<font color=\"red\">★★★★★</font>") && page.contains("reviews-v3-x"));
    }
}
