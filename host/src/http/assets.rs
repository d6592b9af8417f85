//! GraphiQL, served entirely by the shell: the page and the files it loads
//! (React, GraphiQL's script and styles) are embedded in the binary, so the
//! page works offline and makes no request to any other host. The files are
//! vendored in `host/src/http/graphiql/` (versions and how to update them in
//! its README).

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

macro_rules! graphiql_version {
    () => {
        "3.9.0"
    };
}

/// The GraphiQL version the page uses (the vendored `graphiql` package).
pub const GRAPHIQL_VERSION: &str = graphiql_version!();

/// Where the files are served; the version in the path lets browsers cache
/// them for good (a new version is a new URL).
pub const ASSETS_PATH: &str = concat!("/graphiql/", graphiql_version!());

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "react.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("graphiql/react.production.min.js"),
    },
    Asset {
        name: "react-dom.production.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("graphiql/react-dom.production.min.js"),
    },
    Asset {
        name: "graphiql.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("graphiql/graphiql.min.js"),
    },
    Asset {
        name: "graphiql.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("graphiql/graphiql.min.css"),
    },
];

/// `GET /graphiql/<version>/<file>`: one of the embedded files, or 404.
pub(super) async fn asset(Path(name): Path<String>) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, format!("no GraphiQL file `{name}`\n")).into_response();
    };
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    response
}

/// The GraphiQL page for the GraphQL endpoint at `endpoint` (a path on this
/// shell) and subscriptions at `subscriptions`.
pub(super) fn page(endpoint: &str, subscriptions: &str) -> Response {
    Html(page_html(endpoint, subscriptions)).into_response()
}

fn page_html(endpoint: &str, subscriptions: &str) -> String {
    // The paths are the shell's own routes; JSON-encode them all the same so
    // that nothing in a request path can break out of the script.
    let endpoint = serde_json::Value::from(endpoint).to_string().replace('<', "\\u003c");
    let subscriptions = serde_json::Value::from(subscriptions).to_string().replace('<', "\\u003c");
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="robots" content="noindex">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>lowshell GraphiQL</title>
    <link rel="icon" href="data:,">
    <style>
      body {{ height: 100%; margin: 0; width: 100%; overflow: hidden; }}
      #graphiql {{ height: 100vh; }}
    </style>
    <script src="{ASSETS_PATH}/react.production.min.js"></script>
    <script src="{ASSETS_PATH}/react-dom.production.min.js"></script>
    <link rel="stylesheet" href="{ASSETS_PATH}/graphiql.min.css">
  </head>
  <body>
    <div id="graphiql">Loading…</div>
    <script src="{ASSETS_PATH}/graphiql.min.js"></script>
    <script>
      const url = (path, ws) => {{
        const u = new URL(path, window.location.href);
        if (ws) u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
        return u.toString();
      }};
      ReactDOM.createRoot(document.getElementById('graphiql')).render(
        React.createElement(GraphiQL, {{
          fetcher: GraphiQL.createFetcher({{
            url: url({endpoint}, false),
            subscriptionUrl: url({subscriptions}, true),
            // The Headers tab's values (an `Authorization` among them) go
            // with every request; subscriptions send them in connection_init.
            wsConnectionParams: () => {{
              try {{ return JSON.parse(localStorage.getItem('graphiql:headers') || '{{}}'); }}
              catch (e) {{ return {{}}; }}
            }},
          }}),
          isHeadersEditorEnabled: true,
          shouldPersistHeaders: true,
          defaultEditorToolsVisibility: true,
        }}),
      );
    </script>
  </body>
</html>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_files_the_shell_serves() {
        let page = page_html("/", "/ws");
        for src in page.split("src=\"").skip(1).chain(page.split("href=\"").skip(1)) {
            let url = src.split('"').next().unwrap_or_default();
            let served = url.strip_prefix(ASSETS_PATH).and_then(|f| f.strip_prefix('/'));
            assert!(
                url == "data:," || served.is_some_and(|f| ASSETS.iter().any(|a| a.name == f)),
                "the page loads {url}, which the shell does not serve"
            );
        }
        assert!(!page.contains("://"), "no absolute URL in the page");
    }

    #[tokio::test]
    async fn every_file_is_served_with_its_type_and_nothing_else() {
        for a in ASSETS {
            let response = asset(Path(a.name.to_owned())).await;
            assert_eq!(response.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(response.headers()[header::CONTENT_TYPE], a.content_type, "{}", a.name);
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        for name in ["../Cargo.toml", "graphiql.js", ""] {
            assert_eq!(asset(Path(name.to_owned())).await.status(), StatusCode::NOT_FOUND, "{name}");
        }
    }
}
