//! pubsub's tables, triggers and status view in their schema, created and migrated by pubsub itself:
//! versioned (`<schema>.migrations`), idempotent, and safe when several processes start at once (each
//! migrates inside one transaction holding `pg_advisory_xact_lock` on the schema's name). README "On
//! PostgreSQL" documents what is here for SQL users.

use tokio_postgres::Client;

use super::url::{Target, error};
use crate::broker::BrokerError;

/// The migrations, in order; `{s}` is the quoted schema, `{messages}` and `{status}` the channels.
/// A released migration is never edited: a change is a new entry.
const MIGRATIONS: &[&str] = &[
    // 1: topics, messages, subscriptions, per-subscription delivery state, the triggers that number,
    // fan out and announce, and the status view.
    r#"
CREATE TABLE {s}.topics (
    name text PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0,
    bytes bigint NOT NULL DEFAULT 0,
    max_msgs bigint,
    max_bytes bigint,
    max_age_ms bigint,
    max_msg_bytes bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.messages (
    topic text NOT NULL REFERENCES {s}.topics (name) ON DELETE CASCADE,
    seq bigint NOT NULL,
    subject text,
    key bytea,
    headers jsonb NOT NULL DEFAULT '{}',
    msg_id text,
    payload bytea NOT NULL,
    published_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (topic, seq)
);
CREATE INDEX ON {s}.messages (topic, published_at);
CREATE TABLE {s}.subscriptions (
    name text PRIMARY KEY,
    topic text NOT NULL REFERENCES {s}.topics (name) ON DELETE CASCADE,
    ack_deadline_ms bigint NOT NULL DEFAULT 30000,
    max_deliveries integer NOT NULL DEFAULT 0,
    dead_letter text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.deliveries (
    subscription text NOT NULL REFERENCES {s}.subscriptions (name) ON DELETE CASCADE,
    topic text NOT NULL,
    seq bigint NOT NULL,
    state text NOT NULL DEFAULT 'available'
        CHECK (state IN ('available', 'in_flight', 'done', 'failed', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    worker text,
    deadline timestamptz,
    available_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    first_delivered timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, seq),
    FOREIGN KEY (topic, seq) REFERENCES {s}.messages (topic, seq) ON DELETE CASCADE
);
CREATE INDEX ON {s}.deliveries (subscription, state, seq);
CREATE INDEX ON {s}.deliveries (topic, seq);

CREATE FUNCTION {s}.number_message() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE t {s}.topics%ROWTYPE;
BEGIN
    UPDATE {s}.topics SET last_seq = last_seq + 1,
            bytes = bytes + octet_length(NEW.payload) + coalesce(octet_length(NEW.key), 0)
        WHERE name = NEW.topic RETURNING * INTO t;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no topic "%" in schema {schema} (pubsub topic create %)', NEW.topic, NEW.topic
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF t.max_msg_bytes IS NOT NULL
       AND octet_length(NEW.payload) + coalesce(octet_length(NEW.key), 0) > t.max_msg_bytes THEN
        RAISE EXCEPTION 'message of % bytes is larger than topic "%" accepts (% bytes)',
            octet_length(NEW.payload) + coalesce(octet_length(NEW.key), 0), NEW.topic, t.max_msg_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    NEW.seq := t.last_seq;
    IF t.max_msgs IS NOT NULL THEN
        DELETE FROM {s}.messages WHERE topic = NEW.topic AND seq <= NEW.seq - t.max_msgs;
    END IF;
    IF t.max_age_ms IS NOT NULL THEN
        DELETE FROM {s}.messages WHERE topic = NEW.topic
            AND published_at < clock_timestamp() - t.max_age_ms * interval '1 millisecond';
    END IF;
    IF t.max_bytes IS NOT NULL THEN
        WHILE (SELECT bytes FROM {s}.topics WHERE name = NEW.topic) > t.max_bytes
              AND EXISTS (SELECT 1 FROM {s}.messages WHERE topic = NEW.topic) LOOP
            DELETE FROM {s}.messages WHERE topic = NEW.topic AND seq IN
                (SELECT seq FROM {s}.messages WHERE topic = NEW.topic ORDER BY seq LIMIT 64);
        END LOOP;
    END IF;
    RETURN NEW;
END $f$;
CREATE FUNCTION {s}.count_gone() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    UPDATE {s}.topics t SET bytes = t.bytes - g.bytes
    FROM (SELECT topic, sum(octet_length(payload) + coalesce(octet_length(key), 0)) AS bytes
          FROM gone GROUP BY topic) g WHERE t.name = g.topic;
    RETURN NULL;
END $f$;
CREATE TRIGGER count_gone AFTER DELETE ON {s}.messages
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION {s}.count_gone();
CREATE TRIGGER number_message BEFORE INSERT ON {s}.messages
    FOR EACH ROW EXECUTE FUNCTION {s}.number_message();

CREATE FUNCTION {s}.fan_out() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO {s}.deliveries (subscription, topic, seq)
        SELECT name, NEW.topic, NEW.seq FROM {s}.subscriptions WHERE topic = NEW.topic;
    PERFORM pg_notify('{messages}', NEW.seq || ' ' || NEW.topic);
    RETURN NULL;
END $f$;
CREATE TRIGGER fan_out AFTER INSERT ON {s}.messages
    FOR EACH ROW EXECUTE FUNCTION {s}.fan_out();

CREATE FUNCTION {s}.announce() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.state = OLD.state AND NEW.attempts = OLD.attempts THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('{status}', json_build_object(
        'subscription', NEW.subscription, 'topic', NEW.topic, 'seq', NEW.seq, 'state', NEW.state,
        'attempts', NEW.attempts, 'worker', NEW.worker, 'deadline', NEW.deadline,
        'error', NEW.last_error)::text);
    RETURN NULL;
END $f$;
CREATE TRIGGER announce AFTER INSERT OR UPDATE ON {s}.deliveries
    FOR EACH ROW EXECUTE FUNCTION {s}.announce();

CREATE VIEW {s}.status AS
SELECT d.subscription, d.topic, d.seq,
       CASE WHEN d.state = 'in_flight' AND d.deadline <= now() THEN 'expired' ELSE d.state END AS state,
       d.attempts, d.worker, d.deadline, d.available_at, d.last_error, d.updated_at,
       m.subject, m.published_at, octet_length(m.payload) AS bytes
FROM {s}.deliveries d JOIN {s}.messages m ON m.topic = d.topic AND m.seq = d.seq;
"#,
    // 2: numbering, retention, fan-out and the wake-up notification per statement. Version 1 updated the
    // topic's row once per message, and each update of one row inside one transaction leaves a longer
    // chain of row versions for the next to walk: a batch of n messages cost n² (2,560 rows took 3.5 s).
    // Now the first message of a topic in a transaction locks the topic's row (so publishers of one
    // topic still commit in seq order), the running seq is kept in a transaction-local setting, and the
    // row is written once per statement, when the statement's rows are known.
    r#"
CREATE OR REPLACE FUNCTION {s}.number_message() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
    t {s}.topics%ROWTYPE;
    counter text := 'pubsub_seq.t' || md5('{schema}/' || NEW.topic);
    last text := current_setting(counter, true);
BEGIN
    IF last IS NULL OR last = '' THEN
        SELECT * INTO t FROM {s}.topics WHERE name = NEW.topic FOR UPDATE;
        last := t.last_seq::text;
    ELSE
        SELECT * INTO t FROM {s}.topics WHERE name = NEW.topic;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no topic "%" in schema {schema} (pubsub topic create %)', NEW.topic, NEW.topic
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF t.max_msg_bytes IS NOT NULL
       AND octet_length(NEW.payload) + coalesce(octet_length(NEW.key), 0) > t.max_msg_bytes THEN
        RAISE EXCEPTION 'message of % bytes is larger than topic "%" accepts (% bytes)',
            octet_length(NEW.payload) + coalesce(octet_length(NEW.key), 0), NEW.topic, t.max_msg_bytes
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    NEW.seq := greatest(last::bigint, t.last_seq) + 1;
    PERFORM set_config(counter, NEW.seq::text, true);
    RETURN NEW;
END $f$;

CREATE FUNCTION {s}.after_publish() RETURNS trigger LANGUAGE plpgsql AS $f$
DECLARE
    r record;
    t {s}.topics%ROWTYPE;
BEGIN
    INSERT INTO {s}.deliveries (subscription, topic, seq)
        SELECT sub.name, a.topic, a.seq FROM added a JOIN {s}.subscriptions sub ON sub.topic = a.topic
        ORDER BY a.seq;
    FOR r IN SELECT topic, max(seq) AS last,
                    sum(octet_length(payload) + coalesce(octet_length(key), 0)) AS bytes
             FROM added GROUP BY topic LOOP
        UPDATE {s}.topics SET last_seq = greatest(last_seq, r.last), bytes = bytes + r.bytes
            WHERE name = r.topic RETURNING * INTO t;
        IF t.max_msgs IS NOT NULL THEN
            DELETE FROM {s}.messages WHERE topic = r.topic AND seq <= r.last - t.max_msgs;
        END IF;
        IF t.max_age_ms IS NOT NULL THEN
            DELETE FROM {s}.messages WHERE topic = r.topic
                AND published_at < clock_timestamp() - t.max_age_ms * interval '1 millisecond';
        END IF;
        IF t.max_bytes IS NOT NULL THEN
            WHILE (SELECT bytes FROM {s}.topics WHERE name = r.topic) > t.max_bytes
                  AND EXISTS (SELECT 1 FROM {s}.messages WHERE topic = r.topic) LOOP
                DELETE FROM {s}.messages WHERE topic = r.topic AND seq IN
                    (SELECT seq FROM {s}.messages WHERE topic = r.topic ORDER BY seq LIMIT 64);
            END LOOP;
        END IF;
        PERFORM pg_notify('{messages}', r.last || ' ' || r.topic);
    END LOOP;
    RETURN NULL;
END $f$;
DROP TRIGGER fan_out ON {s}.messages;
DROP FUNCTION {s}.fan_out();
CREATE TRIGGER after_publish AFTER INSERT ON {s}.messages
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION {s}.after_publish();

-- What workers look through when they claim: the deliveries not yet settled, in seq order, without
-- walking past every settled one (a claim used to get slower with every message done).
CREATE INDEX deliveries_pending ON {s}.deliveries (subscription, seq) WHERE state IN ('available', 'failed', 'in_flight');
-- What a worker holds, counted before each claim (its room), whatever the backlog.
CREATE INDEX deliveries_held ON {s}.deliveries (subscription, worker) WHERE state = 'in_flight';

-- Publishing from SQL without knowing the table: returns the new message's seq.
CREATE FUNCTION {s}.publish(topic text, payload bytea, key bytea DEFAULT NULL,
                            headers jsonb DEFAULT '{}', subject text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $f$
    INSERT INTO {s}.messages (topic, subject, key, headers, payload)
    VALUES (topic, subject, key, coalesce(headers, '{}'), payload) RETURNING seq
$f$;
CREATE FUNCTION {s}.publish(topic text, payload text, key text DEFAULT NULL,
                            headers jsonb DEFAULT '{}', subject text DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $f$
    SELECT {s}.publish(topic, convert_to(payload, 'UTF8'), convert_to(key, 'UTF8'), headers, subject)
$f$;
"#,
];

/// The newest schema version this build knows.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Creates or migrates the schema; refuses one newer than this build.
pub(super) async fn migrate(client: &mut Client, target: &Target) -> Result<(), BrokerError> {
    let fail = |e: tokio_postgres::Error| error(&target.shown, &e);
    let s = target.s();
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&format!("pubsub schema {}", target.schema)],
    )
    .await
    .map_err(fail)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.migrations (
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(fail)?;
    let row = tx
        .query_one(&format!("SELECT coalesce(max(version), 0) FROM {s}.migrations"), &[])
        .await
        .map_err(fail)?;
    let current: i32 = row.get(0);
    if current > VERSION {
        return Err(BrokerError::Invalid(format!(
            "schema \"{}\" is at version {current}, newer than this pubsub knows ({VERSION}): upgrade pubsub, or use another ?schema=",
            target.schema
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(current).unwrap_or(0)) {
        let sql = sql
            .replace("{s}", &s)
            .replace("{schema}", &target.schema)
            .replace("{messages}", &target.messages_channel())
            .replace("{status}", &target.status_channel());
        tx.batch_execute(&sql).await.map_err(fail)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(&format!("INSERT INTO {s}.migrations (version) VALUES ($1)"), &[&version])
            .await
            .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}
