//! Request extractors of the gateway's handlers, with one error mapping: a
//! body over `Gateway::max_body` is 413 `PAYLOAD_TOO_LARGE`, an unreadable
//! body or JSON that does not parse is 400 `INVALID_REQUEST`, in the error
//! shape `E` of the API the route belongs to ([`ApiError`] for OpenSandbox,
//! `E2bError` for E2B).

use std::marker::PhantomData;

use axum::{
    extract::{FromRequest, FromRequestParts, Request},
    response::IntoResponse,
};
use bytes::Bytes;
use http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use crate::{Gateway, error::ApiError};

/// Read a request body within `gw.max_body` (413 beyond it).
pub async fn read_body(gw: &Gateway, body: axum::body::Body) -> Result<Bytes, ApiError> {
    match Limited::new(body, gw.max_body).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::TooLarge(format!(
            "request body exceeds {} bytes",
            gw.max_body
        ))),
        Err(e) => Err(ApiError::BodyRead(e)),
    }
}

/// `bytes` as JSON (400 with serde's reason otherwise).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(ApiError::InvalidJson)
}

/// A body that may be empty (or only whitespace), meaning `T::default()`.
pub async fn json_or_empty<T: DeserializeOwned + Default>(
    gw: &Gateway,
    body: axum::body::Body,
) -> Result<T, ApiError> {
    let bytes = read_body(gw, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

/// The body's bytes, within the gateway's limit.
pub struct RawBody<E = ApiError>(pub Bytes, pub PhantomData<E>);

/// A JSON body.
pub struct Json<T, E = ApiError>(pub T, pub PhantomData<E>);

/// A JSON body that may be empty (`{}` implied: `T::default()`).
pub struct JsonOrEmpty<T, E = ApiError>(pub T, pub PhantomData<E>);

/// The query string's `key=value` pairs in order (repeated keys kept).
pub struct Query<E = ApiError>(pub Vec<(String, String)>, pub PhantomData<E>);

impl<E> FromRequest<Gateway> for RawBody<E>
where
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, E> {
        Ok(RawBody(read_body(gw, req.into_body()).await?, PhantomData))
    }
}

impl<T, E> FromRequest<Gateway> for Json<T, E>
where
    T: DeserializeOwned,
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, E> {
        let bytes = read_body(gw, req.into_body()).await?;
        Ok(Json(parse_json(&bytes)?, PhantomData))
    }
}

impl<T, E> FromRequest<Gateway> for JsonOrEmpty<T, E>
where
    T: DeserializeOwned + Default,
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request(req: Request, gw: &Gateway) -> Result<Self, E> {
        Ok(JsonOrEmpty(
            json_or_empty(gw, req.into_body()).await?,
            PhantomData,
        ))
    }
}

impl<S, E> FromRequestParts<S> for Query<E>
where
    S: Send + Sync,
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, E> {
        let axum::extract::Query(pairs) =
            axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
                .await
                .map_err(|r| ApiError::Invalid(r.body_text()))?;
        Ok(Query(pairs, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(max_body: usize) -> Gateway {
        let ch = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let mut gw = Gateway::new(
            sandpool_proto::v1::scheduler_client::SchedulerClient::with_interceptor(
                ch,
                Default::default(),
            ),
            &[],
        );
        gw.max_body = max_body;
        gw
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413_and_bad_json_400() {
        let gw = gateway(4);
        let e = read_body(&gw, axum::body::Body::from("12345"))
            .await
            .expect_err("over the limit");
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("PAYLOAD_TOO_LARGE", "request body exceeds 4 bytes")
        );
        assert_eq!(
            read_body(&gw, axum::body::Body::from("1234"))
                .await
                .expect("at the limit"),
            Bytes::from_static(b"1234")
        );
        let e = json_or_empty::<Vec<u8>>(&gw, axum::body::Body::from("[1,"))
            .await
            .expect_err("bad json");
        assert_eq!(e.code(), "INVALID_REQUEST");
        assert!(e.to_string().starts_with("invalid JSON body: "), "{e}");
        assert_eq!(
            json_or_empty::<Vec<u8>>(&gw, axum::body::Body::from(" \n"))
                .await
                .expect("empty"),
            Vec::<u8>::new()
        );
    }
}
