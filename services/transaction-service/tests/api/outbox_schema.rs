//! The outbox table's own rules, as the migrations leave them: a `PENDING` row the relay
//! could not publish as written is refused, and marking rows settled (the relay's
//! `UPDATE`) is not held to the writer's checks again.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn insert(
    app: &TestApp,
    aggregate_type: &str,
    trace: (Option<&str>, Option<&str>),
    headers: Option<Value>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into outbox (id, aggregate_type, aggregate_id, event_type, payload, \
         traceparent, tracestate, headers) values ($1, $2, 'a1', 'Tested', '{}', $3, $4, $5)",
    )
    .bind(id)
    .bind(aggregate_type)
    .bind(trace.0)
    .bind(trace.1)
    .bind(headers)
    .execute(&app.pool)
    .await?;
    Ok(id)
}

#[tokio::test]
async fn a_pending_row_the_relay_could_not_publish_is_refused_by_its_check() {
    let app = spawn_app().await;
    let cases = [
        ("a b", (None, None), None, "outbox_aggregate_type_check"),
        (
            "transaction",
            (Some(&TRACEPARENT.replacen("00-", "ff-", 1)[..]), None),
            None,
            "outbox_traceparent_check",
        ),
        (
            "transaction",
            (Some(TRACEPARENT), Some("k=v\tw")),
            None,
            "outbox_tracestate_check",
        ),
        (
            "transaction",
            (None, None),
            Some(json!({"source": "forged"})),
            "outbox_headers_check",
        ),
        (
            "transaction",
            (None, None),
            Some(json!({"n": 1})),
            "outbox_headers_check",
        ),
    ];
    for (aggregate_type, trace, headers, constraint) in cases {
        let refused = insert(&app, aggregate_type, trace, headers.clone())
            .await
            .expect_err(constraint);
        let db = refused.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23514"), "{refused}");
        assert_eq!(
            db.constraint(),
            Some(constraint),
            "{aggregate_type} {trace:?} {headers:?}"
        );
    }
}

#[tokio::test]
async fn settled_rows_are_not_held_to_the_writer_checks_pending_ones_are() {
    let app = spawn_app().await;
    let headers = Some(json!({"tenant": "t1"}));
    let a = insert(
        &app,
        "transaction",
        (Some(TRACEPARENT), Some("k=v")),
        headers.clone(),
    );
    let b = insert(&app, "transaction", (Some(TRACEPARENT), None), headers);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    for (id, status) in [(a, "PROCESSED"), (b, "DEAD_LETTERED")] {
        let marked = sqlx::query(
            "update outbox set status = $2, processed_at = now() \
             where id = $1 and status = 'PENDING'",
        )
        .bind(id)
        .bind(status)
        .execute(&app.pool)
        .await
        .unwrap();
        assert_eq!(marked.rows_affected(), 1, "{status}");
    }
    let statuses: Vec<String> =
        sqlx::query_scalar("select status from outbox where id = any($1) order by id")
            .bind([a, b])
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(statuses, ["PROCESSED", "DEAD_LETTERED"]);

    // The guard itself (what spares the marking the regexes): a settled row's writer
    // columns are not checked again, a pending one's still are. Against the checks of
    // 0005 the first update is refused too.
    let bad = TRACEPARENT.replacen("00-", "ff-", 1);
    let set_traceparent = |id: Uuid| {
        sqlx::query("update outbox set traceparent = $2 where id = $1")
            .bind(id)
            .bind(bad.clone())
            .execute(&app.pool)
    };
    set_traceparent(a)
        .await
        .expect("a settled row is not held to the writer's checks");
    let pending = insert(&app, "transaction", (Some(TRACEPARENT), None), None)
        .await
        .unwrap();
    let refused = set_traceparent(pending)
        .await
        .expect_err("a pending row is");
    assert_eq!(
        refused.as_database_error().and_then(|e| e.constraint()),
        Some("outbox_traceparent_check")
    );
}
