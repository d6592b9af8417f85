//! Routes: GraphQL on `POST /` and `POST /graphql` (and GET with a `query`
//! parameter), GraphiQL on `GET /` in a browser, `GET /healthz`.

use super::Graphql;
use super::schema::IdempotencyKey;
use async_graphql::http::GraphiQLSource;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;

pub fn router(graphql: Arc<Graphql>) -> Router {
    Router::new()
        .route("/", get(graphiql_or_query).post(execute))
        .route("/graphql", get(graphiql_or_query).post(execute))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(graphql)
}

async fn execute(
    State(graphql): State<Arc<Graphql>>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> GraphQLResponse {
    let mut request = request.into_inner();
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).filter(|k| !k.is_empty())
    {
        request = request.data(IdempotencyKey(key.to_owned()));
    }
    graphql.schema().execute(request).await.into()
}

/// GraphiQL for a browser; a GraphQL GET request when there is a `query`.
async fn graphiql_or_query(
    State(graphql): State<Arc<Graphql>>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let has_query = query.as_deref().is_some_and(|q| q.split('&').any(|p| p.starts_with("query=")));
    if !has_query {
        return Html(GraphiQLSource::build().endpoint(request.uri().path()).finish()).into_response();
    }
    let headers = request.headers().clone();
    match <GraphQLRequest as axum::extract::FromRequest<()>>::from_request(request, &()).await {
        Ok(request) => execute(State(graphql), headers, request).await.into_response(),
        Err(rejection) => rejection.into_response(),
    }
}
