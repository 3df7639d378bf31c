//! The read side for downstream systems under `/api/v1`: invoice and
//! transaction lists with filters and key paging, the change feed, and the
//! CSV exports of open invoices and customers. Readable with the admin,
//! viewer or consumer token (see [`crate::http::auth::READ_SIDE`]).
//!
//! Handlers are thin: parameters are checked by [`crate::read`] and
//! [`crate::feed`] before anything is read (unknown parameters, bad values,
//! inverted ranges and foreign cursors are a 400 naming the parameter); a
//! feed position behind the retention cut is a 410 saying how to recover.
//! Store reads run on a blocking thread.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::feed::{self, ChangesError};
use crate::http::blocking;
use crate::http::error::{ApiError, Query};
use crate::read::export::{CustomersCsv, CustomersParams, OpenInvoicesCsv, OpenInvoicesParams};
use crate::read::{self, view, InvoiceParams, ReadError, TransactionParams};
use crate::store::{Store, StoreError};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/invoices", get(invoices))
        .route("/transactions", get(transactions))
        .route("/changes", get(changes))
        .route("/exports/open-invoices.csv", get(open_invoices_csv))
        .route("/exports/customers.csv", get(customers_csv))
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Invalid(m) => ApiError::bad_request(m),
            ReadError::Store(s) => s.into(),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

async fn invoices(State(app): State<Arc<App>>, Query(p): Query<InvoiceParams>) -> ApiResult {
    let today = view::today();
    let connectors = app.connector_ids();
    let q = read::invoice_query(&p, &connectors, today)?;
    let page = blocking(move || read::page(&app.store, &q, true, &connectors, today)).await??;
    Ok(Json(json!({
        "invoices": page.items,
        "next": page.next,
        "feed_seq": page.feed_seq,
    }))
    .into_response())
}

async fn transactions(
    State(app): State<Arc<App>>,
    Query(p): Query<TransactionParams>,
) -> ApiResult {
    let today = view::today();
    let connectors = app.connector_ids();
    let q = read::transaction_query(&p, &connectors)?;
    let page = blocking(move || read::page(&app.store, &q, false, &connectors, today)).await??;
    Ok(Json(json!({
        "transactions": page.items,
        "next": page.next,
        "feed_seq": page.feed_seq,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    after: Option<String>,
    limit: Option<String>,
}

async fn changes(State(app): State<Arc<App>>, Query(p): Query<ChangesParams>) -> ApiResult {
    let after = feed::parse_after(p.after.as_deref()).map_err(changes_error)?;
    let limit = match p.limit.as_deref().map(str::trim) {
        None => feed::DEFAULT_LIMIT,
        Some(s) => s.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "`limit` must be a whole number between 1 and {}, got `{s}`",
                read::MAX_LIMIT
            ))
        })?,
    };
    match blocking(move || feed::changes(&app.store, after, limit)).await? {
        Ok(page) => Ok(Json(page).into_response()),
        Err(e) => Ok(gone_response(e)),
    }
}

fn changes_error(e: ChangesError) -> ApiError {
    match e {
        ChangesError::Invalid(m) => ApiError::bad_request(m),
        ChangesError::Store(s) => s.into(),
        gone @ ChangesError::Gone { .. } => ApiError::new(StatusCode::GONE, gone.to_string()),
    }
}

/// A 410 carries where the feed stands, so the reader can resume after its
/// full read.
fn gone_response(e: ChangesError) -> Response {
    if let ChangesError::Gone { after, bounds } = &e {
        return (
            StatusCode::GONE,
            Json(json!({
                "error": e.to_string(),
                "after": after,
                "expired_through": bounds.expired_through,
                "resume_after": bounds.latest,
            })),
        )
            .into_response();
    }
    changes_error(e).into_response()
}

/// A CSV body produced chunk by chunk on blocking threads.
trait Chunks: Send + 'static {
    fn next_chunk(&mut self, store: &Store) -> Result<Option<Vec<u8>>, StoreError>;
}

impl Chunks for OpenInvoicesCsv {
    fn next_chunk(&mut self, store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
        OpenInvoicesCsv::next_chunk(self, store)
    }
}

impl Chunks for CustomersCsv {
    fn next_chunk(&mut self, store: &Store) -> Result<Option<Vec<u8>>, StoreError> {
        CustomersCsv::next_chunk(self, store)
    }
}

fn csv_response<C: Chunks>(app: Arc<App>, source: C, filename: &'static str) -> Response {
    let stream = futures::stream::unfold((app, source), move |(app, mut source)| async move {
        let chunk = blocking(move || {
            let chunk = source.next_chunk(&app.store);
            (chunk, app, source)
        })
        .await;
        match chunk {
            Ok((Ok(Some(bytes)), app, source)) => {
                Some((Ok::<_, std::io::Error>(bytes), (app, source)))
            }
            Ok((Ok(None), _, _)) => None,
            Ok((Err(e), app, source)) => {
                tracing::error!(error = %e, file = filename, "CSV export failed part-way");
                Some((Err(std::io::Error::other(e.to_string())), (app, source)))
            }
            Err(e) => {
                tracing::error!(error = %e.message, file = filename, "CSV export cut short");
                None
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn open_invoices_csv(
    State(app): State<Arc<App>>,
    Query(p): Query<OpenInvoicesParams>,
) -> ApiResult {
    let source = OpenInvoicesCsv::new(&p, &app.connector_ids(), view::today())?;
    Ok(csv_response(app, source, "open-invoices.csv"))
}

async fn customers_csv(State(app): State<Arc<App>>, Query(p): Query<CustomersParams>) -> ApiResult {
    let source = CustomersCsv::new(&p, &app.connector_ids())?;
    Ok(csv_response(app, source, "customers.csv"))
}
