//! The PostgreSQL backend beside a minimal `tokio-postgres` loop doing the same work on the same schema,
//! in the same run against the same server:
//! - publish: 16-byte messages in batches of 256, each batch one transaction (the loop: BEGIN, one
//!   INSERT … SELECT FROM unnest, COMMIT; the backend: `PostgresBroker::publish_batch`);
//! - queue: claim and ack what was published, one worker (the loop: one UPDATE … FOR UPDATE SKIP
//!   LOCKED claiming 256, then one UPDATE acking them; the backend: a `sub -s` worker with prefetch
//!   256, every delivery acked as it arrives, as `pubsub bench --scenario queue` does).
//!
//! Both write to a topic with one subscription, so the triggers (numbering, fan-out row, status
//! notification) run for both. Run with `cargo bench --bench postgres` (`-- --quick` for a tenth of
//! the work; `-- --url URL` for another server than postgres://root@127.0.0.1:5432/test). It makes a
//! schema of its own and drops it at the end.
//!
//! Target (PostgreSQL backend issue): within 1.5x of the minimal loop.

#![expect(
    clippy::print_stdout,
    clippy::expect_used,
    reason = "a benchmark binary reports on stdout and stops on a setup error"
)]

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use pubsub::broker::postgres::PostgresBroker;
use pubsub::broker::{Broker, Settle, StreamItem, SubscribeRequest};
use pubsub::model::{AckMode, Name, Pattern, PublishRequest, SubscriptionConfig, TopicConfig};
use tokio_postgres::NoTls;

/// Messages per batch, as `pubsub bench` sends them by default.
const BATCH: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let base = args
        .iter()
        .position(|a| a == "--url")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "postgres://root@127.0.0.1:5432/test".into());
    let total = if quick { 10_240 } else { 51_200 };
    let schema = format!("pubsub_bench_{}", std::process::id());
    let url = format!("{base}?schema={schema}&sslmode=disable");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let Ok((sql, connection)) = tokio_postgres::connect(&format!("{base}?sslmode=disable"), NoTls).await
        else {
            println!("no PostgreSQL at {base}; nothing measured");
            return;
        };
        tokio::spawn(connection);
        let broker = PostgresBroker::connect(&url).await.expect("connect");
        let (raw_topic, our_topic) = (Name::new("raw").expect("name"), Name::new("ours").expect("name"));
        for topic in [&raw_topic, &our_topic] {
            broker.create_topic(TopicConfig::new(topic.clone())).await.expect("topic");
            let mut sub =
                SubscriptionConfig::new(Name::new(&format!("{topic}-w")).expect("name"), topic.clone());
            sub.ack = AckMode::Explicit;
            broker.create_subscription(sub).await.expect("subscription");
        }
        println!("PostgreSQL, {total} × 16 B, batches of {BATCH} (msgs/s, median of 3 alternating runs)");
        let (mut raw_pub, mut our_pub, mut raw_queue, mut our_queue) = (vec![], vec![], vec![], vec![]);
        for _ in 0..3 {
            raw_pub.push(raw_publish(&sql, &schema, total).await);
            our_pub.push(our_publish(&broker, &our_topic, total).await);
            raw_queue.push(raw_claim_and_ack(&sql, &schema, "raw-w", total).await);
            our_queue.push(our_claim_and_ack(&broker, &our_topic, total).await);
        }
        let rows = [
            ("publish", "BEGIN; INSERT … unnest(256); COMMIT", "publish_batch(256)", raw_pub, our_pub),
            (
                "queue",
                "claim 256 SKIP LOCKED; ack 256 in one UPDATE",
                "worker, prefetch 256, ack each",
                raw_queue,
                our_queue,
            ),
        ];
        for (what, raw_how, our_how, raw, ours) in rows {
            let (raw, ours) = (median(raw), median(ours));
            println!("{what}: minimal loop ({raw_how}) | {raw:.0}");
            println!("{what}: PostgresBroker ({our_how}) | {ours:.0}");
            println!("{what}: ratio (minimal / backend) | {:.2}x (target ≤ 1.5x)", raw / ours);
        }
        broker.close().await;
        sql.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
    });
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn raw_publish(sql: &tokio_postgres::Client, schema: &str, total: usize) -> f64 {
    let insert = format!(
        "INSERT INTO {schema}.messages (topic, payload) SELECT 'raw', p FROM unnest($1::bytea[]) AS u(p)"
    );
    let payloads: Vec<&[u8]> = vec![&[7u8; 16]; BATCH];
    let started = Instant::now();
    for _ in 0..total / BATCH {
        sql.batch_execute("BEGIN").await.expect("begin");
        sql.execute(&insert, &[&payloads]).await.expect("insert");
        sql.batch_execute("COMMIT").await.expect("commit");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn our_publish(broker: &PostgresBroker, topic: &Name, total: usize) -> f64 {
    let payload = Bytes::from_static(&[7u8; 16]);
    let started = Instant::now();
    for _ in 0..total / BATCH {
        let batch = (0..BATCH).map(|_| PublishRequest::new(topic.clone(), payload.clone())).collect();
        broker.publish_batch(batch).await.expect("publish");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn raw_claim_and_ack(sql: &tokio_postgres::Client, schema: &str, sub: &str, total: usize) -> f64 {
    let claim = format!(
        "UPDATE {schema}.deliveries d SET state = 'in_flight', attempts = d.attempts + 1, worker = 'raw',
             deadline = now() + interval '30 seconds', updated_at = now()
         WHERE d.subscription = $1 AND d.seq IN (
             SELECT seq FROM {schema}.deliveries WHERE subscription = $1 AND state = 'available'
             ORDER BY seq LIMIT {BATCH} FOR UPDATE SKIP LOCKED)
         RETURNING d.seq, d.attempts, (SELECT payload FROM {schema}.messages m WHERE m.topic = d.topic AND m.seq = d.seq)"
    );
    let ack = format!(
        "UPDATE {schema}.deliveries d SET state = 'done', deadline = NULL, updated_at = now()
         FROM unnest($2::int8[], $3::int4[]) AS a(seq, lease)
         WHERE d.subscription = $1 AND d.seq = a.seq AND d.state = 'in_flight' AND d.attempts = a.lease"
    );
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let rows = sql.query(&claim, &[&sub]).await.expect("claim");
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let leases: Vec<i32> = rows.iter().map(|r| r.get(1)).collect();
        sql.execute(&ack, &[&sub, &seqs, &leases]).await.expect("ack");
        done += rows.len();
        if rows.is_empty() {
            println!("the minimal loop found nothing to claim after {done}");
            std::process::exit(1);
        }
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn our_claim_and_ack(broker: &PostgresBroker, topic: &Name, total: usize) -> f64 {
    let mut req = SubscribeRequest::live(vec![Pattern::parse(topic.as_str()).expect("pattern")]);
    req.subscription = Some(Name::new(&format!("{topic}-w")).expect("name"));
    req.ack = AckMode::Explicit;
    req.prefetch = Some(u32::try_from(BATCH).unwrap_or(256));
    let started = Instant::now();
    let mut stream = broker.subscribe(req).await.expect("subscribe");
    let mut acks = FuturesUnordered::new();
    let mut got = 0;
    while got < total {
        tokio::select! {
            item = stream.next() => match item {
                Some(Ok(StreamItem::Delivery(d))) => {
                    got += 1;
                    let token = d.token.expect("an acked worker's delivery has a token");
                    acks.push(async move { broker.settle(&token, Settle::Ack).await });
                }
                Some(Ok(_)) => {}
                other => {
                    println!("the worker's stream ended after {got}: {other:?}");
                    std::process::exit(1);
                }
            },
            Some(acked) = acks.next() => acked.expect("ack"),
        }
    }
    while let Some(acked) = acks.next().await {
        acked.expect("ack");
    }
    total as f64 / started.elapsed().as_secs_f64()
}
