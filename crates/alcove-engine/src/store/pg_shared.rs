//! The shared store's cluster side on PostgreSQL: code blobs, the async
//! queue with leases, cluster-wide concurrency slots and what runs where.
//! Lease times are the database's clock (`now()`), so daemons agree.

use super::*;
use crate::store::Renewed;

impl SharedStore for PgStore {
    fn put_code(&self, digest: &str, tar: &[u8]) -> Result<(), EngineError> {
        let digest = digest.to_owned();
        let tar = tar.to_vec();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let bytes = i64::try_from(tar.len()).unwrap_or(i64::MAX);
            execute(
                &client,
                "INSERT INTO alcove_code_blobs (digest, tar, bytes, created_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (digest) DO NOTHING",
                &[&digest, &tar, &bytes],
            )
            .await?;
            Ok(())
        })
    }

    fn code(&self, digest: &str) -> Result<Option<Vec<u8>>, EngineError> {
        let digest = digest.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            query_opt(
                &client,
                "SELECT tar FROM alcove_code_blobs WHERE digest = $1",
                &[&digest],
            )
            .await?
            .map(|row| col(&row, 0))
            .transpose()
        })
    }

    fn enqueue(&self, r: &InvocationRecord, body: &[u8], retries: u32) -> Result<(), EngineError> {
        let r = r.clone();
        let body = body.to_vec();
        self.run(move |ctx| async move {
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            // No node yet: whichever daemon claims it sets one.
            insert_record(&tx, &r, None).await?;
            execute(
                &tx,
                "INSERT INTO alcove_queue (id, function, version, body, retries, attempts, due_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, 0, now(), clock_timestamp())",
                &[&r.id, &r.function, &int(r.version)?, &body, &int(retries)?],
            )
            .await?;
            tx.commit().await.map_err(pg)
        })
    }

    fn claim(&self, max: usize, lease: Duration) -> Result<Vec<ClaimedJob>, EngineError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                "UPDATE alcove_queue q
                 SET leased_by = $1, lease_until = now() + make_interval(secs => $2), attempts = q.attempts + 1
                 FROM (SELECT id FROM alcove_queue
                       WHERE due_at <= now() AND (lease_until IS NULL OR lease_until < now())
                       ORDER BY created_at, id LIMIT $3
                       FOR UPDATE SKIP LOCKED) due
                 WHERE q.id = due.id
                 RETURNING q.id, q.function, q.version, q.body, q.retries, q.attempts,
                           extract(epoch FROM q.created_at)::float8",
                &[&&*ctx.lessee, &secs(lease), &limit],
            )
            .await?;
            let mut jobs = rows
                .iter()
                .map(|r| {
                    let created: f64 = col(r, 6)?;
                    let job = ClaimedJob {
                        id: col(r, 0)?,
                        function: col(r, 1)?,
                        version: u32_col(r, 2, "a version")?,
                        body: col(r, 3)?,
                        retries: u32_col(r, 4, "a retry count")?,
                        attempt: u32_col(r, 5, "an attempt count")?,
                    };
                    Ok((created, job))
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            jobs.sort_by(|a, b| a.0.total_cmp(&b.0));
            Ok(jobs.into_iter().map(|(_, job)| job).collect())
        })
    }

    fn renew(
        &self,
        lease: Duration,
        jobs: &[String],
        slots: &[String],
    ) -> Result<Renewed, EngineError> {
        let (jobs, slots) = (jobs.to_vec(), slots.to_vec());
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let lessee: &str = &ctx.lessee;
            let ids = |rows: Vec<Row>| -> Result<Vec<String>, EngineError> {
                rows.iter().map(|r| col(r, 0)).collect()
            };
            let jobs = ids(query(
                &client,
                "UPDATE alcove_queue SET lease_until = now() + make_interval(secs => $2)
                 WHERE leased_by = $1 AND id = ANY($3) RETURNING id",
                &[&lessee, &secs(lease), &jobs],
            )
            .await?)?;
            let slots = ids(query(
                &client,
                "UPDATE alcove_slots SET lease_until = now() + make_interval(secs => $2)
                 WHERE node = $1 AND invocation = ANY($3) RETURNING invocation",
                &[&lessee, &secs(lease), &slots],
            )
            .await?)?;
            Ok(Renewed { jobs, slots })
        })
    }

    fn finish_job(&self, id: &str) -> Result<(), EngineError> {
        // Only the holder takes a job out (see update_invocation).
        self.as_holder(
            "DELETE FROM alcove_queue WHERE id = $1 AND leased_by = $2",
            id,
            None,
        )
    }

    fn retry_job(&self, id: &str, delay: Duration) -> Result<(), EngineError> {
        self.as_holder(
            "UPDATE alcove_queue SET leased_by = NULL, lease_until = NULL,
             due_at = now() + make_interval(secs => $3)
             WHERE id = $1 AND leased_by = $2",
            id,
            Some(delay),
        )
    }

    fn release_job(&self, id: &str, delay: Duration) -> Result<(), EngineError> {
        self.as_holder(
            "UPDATE alcove_queue SET leased_by = NULL, lease_until = NULL,
             due_at = now() + make_interval(secs => $3), attempts = GREATEST(attempts - 1, 0)
             WHERE id = $1 AND leased_by = $2",
            id,
            Some(delay),
        )
    }

    fn cancel_queued(&self, id: &str, reason: &str) -> Result<bool, EngineError> {
        let (id, reason) = (id.to_owned(), reason.to_owned());
        self.run(move |ctx| async move {
            let mut client = ctx.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let taken = execute(
                &tx,
                "DELETE FROM alcove_queue
                 WHERE id = $1 AND (leased_by IS NULL OR lease_until < now())",
                &[&id],
            )
            .await?;
            if taken == 0 {
                return Ok(false);
            }
            execute(
                &tx,
                "UPDATE alcove_invocations SET status = 'cancelled', error = $2, ended_at = $3
                 WHERE id = $1",
                &[&id, &reason, &now()],
            )
            .await?;
            tx.commit().await.map_err(pg)?;
            Ok(true)
        })
    }

    fn queue_depth(&self) -> Result<u64, EngineError> {
        self.run(|ctx| async move {
            let client = ctx.client().await?;
            let row = query_one(&client, "SELECT count(*) FROM alcove_queue", &[]).await?;
            let n: i64 = col(&row, 0)?;
            u64::try_from(n).map_err(|_| out_of_range("a queue depth", n))
        })
    }

    fn take_slot(
        &self,
        function: &str,
        cap: u32,
        invocation: &str,
        lease: Duration,
    ) -> Result<bool, EngineError> {
        let function = function.to_owned();
        let invocation = invocation.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            // One statement (schema step 2): see alcove_take_slot.
            let row = query_one(
                &client,
                "SELECT alcove_take_slot($1, $2, $3, $4, $5)",
                &[
                    &function,
                    &int(cap)?,
                    &invocation,
                    &&*ctx.lessee,
                    &secs(lease),
                ],
            )
            .await?;
            col(&row, 0)
        })
    }

    fn release_slot(&self, invocation: &str) -> Result<(), EngineError> {
        // Only the holder's row: another daemon may have taken over the
        // invocation (and its slot) after this one's lease lapsed.
        self.as_holder(
            "DELETE FROM alcove_slots WHERE invocation = $1 AND node = $2",
            invocation,
            None,
        )
    }

    fn running(
        &self,
        function: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ClusterRunning>, EngineError> {
        let function = function.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let rows = query(
                &client,
                "SELECT id, function, version, COALESCE(node, ''), COALESCE(started_at, created_at), is_async
                 FROM alcove_invocations
                 WHERE status = 'running' AND ($1::text IS NULL OR function = $1)
                 ORDER BY started_at NULLS LAST, created_at LIMIT $2",
                &[&function, &limit],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ClusterRunning {
                        id: col(r, 0)?,
                        function: col(r, 1)?,
                        version: u32_col(r, 2, "a version")?,
                        node: col(r, 3)?,
                        started_at: col(r, 4)?,
                        is_async: col(r, 5)?,
                    })
                })
                .collect()
        })
    }
}

impl PgStore {
    /// Runs `sql` on one row this process holds: `$1` is its id, `$2` this
    /// process's lessee, `$3` (when given) a delay in seconds.
    fn as_holder(
        &self,
        sql: &'static str,
        id: &str,
        delay: Option<Duration>,
    ) -> Result<(), EngineError> {
        let id = id.to_owned();
        self.run(move |ctx| async move {
            let client = ctx.client().await?;
            let lessee: &str = &ctx.lessee;
            match delay {
                Some(delay) => execute(&client, sql, &[&id, &lessee, &secs(delay)]).await?,
                None => execute(&client, sql, &[&id, &lessee]).await?,
            };
            Ok(())
        })
    }
}
