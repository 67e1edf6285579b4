//! The writes the hot path makes after it has answered ([`KeyUse`]), on the decisions'
//! pool: credits spent (by group commit, below), last uses, a verified digest, an
//! imported key re-hashed.

use super::*;

/// How credit spends share the database. Calls wait in memory, in one of a few lanes (by
/// key), rather than each holding a connection while it waits for the row's lock; one
/// caller at a time per lane takes everything waiting and spends it per key in **one**
/// `UPDATE` of the summed cost (a group commit), answering each call with its own balance.
/// Only when the sum does not fit are the calls spent one by one, in arrival order, so the
/// last credits go exactly as far as they go. Spends hold at most half the pool, so a hot
/// key with credits never takes the connections that key reads need.
pub(super) struct Spending {
    lanes: Vec<Lane>,
    slots: tokio::sync::Semaphore,
}

#[derive(Default)]
pub(super) struct Lane {
    waiting: std::sync::Mutex<Vec<Waiter>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A call waiting to spend, and where its answer goes.
pub(super) struct Waiter {
    /// The holder, as `key_credits.key_id` names it.
    id: String,
    cost: i64,
    refill: Option<Refill>,
    now: Timestamp,
    answer: tokio::sync::oneshot::Sender<Result<Spend, StoreError>>,
}

impl Spending {
    const LANES: usize = 64;

    pub(super) fn new(max_connections: u32, backend: Backend) -> Self {
        // SQLite has one writer: batches queue here, in memory, rather than in its busy
        // handler (which sleeps in growing steps). Postgres writes rows in parallel.
        // One lane, too: every waiting spend goes into the one transaction, one fsync.
        let (lanes, slots) = match backend {
            Backend::Sqlite => (1, 1),
            Backend::Postgres => (Self::LANES, (max_connections as usize / 2).max(1)),
        };
        Self { lanes: (0..lanes).map(|_| Lane::default()).collect(), slots: tokio::sync::Semaphore::new(slots) }
    }

    fn lane(&self, id: &str) -> &Lane {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        &self.lanes[hasher.finish() as usize % self.lanes.len()]
    }
}

/// What a waiter is told when the call that took its spend failed: the cause is logged
/// once, by that call; no SQL text travels.
pub(super) fn spend_failed(e: &StoreError) -> StoreError {
    StoreError::Unavailable(Box::new(std::io::Error::other(format!("spending credits failed: {e}"))))
}

/// The refill rule as `key_credits.refill` holds it.
pub(super) fn refill_spec(refill: Option<&Refill>) -> String {
    refill.map_or_else(String::new, |r| format!("{}/{}/{}", r.amount, r.interval_str(), r.mode_str()))
}

/// Sets (or, with `None`, removes) a holder's credits, counted under `refill`.
pub(super) async fn set_credits(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    holder: &CreditHolder,
    balance: Option<CreditBalance>,
    refill: Option<&Refill>,
) -> Result<(), StoreError> {
    match balance {
        Some(balance) => {
            sqlx::query(
                "INSERT INTO key_credits (key_id, remaining, period, refill) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (key_id) DO UPDATE SET remaining = excluded.remaining, period = excluded.period, \
                 refill = excluded.refill",
            )
            .bind(holder.stored())
            .bind(balance.remaining)
            .bind(balance.period)
            .bind(refill_spec(refill))
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM key_credits WHERE key_id = $1").bind(holder.stored()).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

impl SqlStore {
    /// Spends every waiter's cost, per key in arrival order, in **one transaction** (one
    /// commit, one fsync, for the whole batch), and answers each only once it committed:
    /// a call is never told it spent what a rolled-back transaction did not. Keys are
    /// spent in id order, so two replicas' batches take row locks in the same order.
    async fn spend_batch(&self, batch: Vec<Waiter>) {
        // A call whose caller gave up (its deadline passed while it waited) spends nothing.
        let mut batch: Vec<Waiter> = batch.into_iter().filter(|w| !w.answer.is_closed()).collect();
        if batch.is_empty() {
            return;
        }
        batch.sort_by(|a, b| a.id.cmp(&b.id));
        let mut answers: Vec<(Waiter, Spend)> = Vec::with_capacity(batch.len());
        // A batch on one key needs no transaction: its one UPDATE commits itself (and when
        // the calls are spent one by one, each is answered by its own commit).
        let one_key = batch.first().is_some_and(|f| batch.iter().all(|w| w.id == f.id && w.refill == f.refill));
        let spent: Result<(), StoreError> = async {
            let mut tx = if one_key {
                Spender::Alone(self.pool.acquire().await?)
            } else {
                Spender::Batch(self.pool.begin().await?)
            };
            while let Some(first) = batch.first() {
                let (id, refill) = (first.id.clone(), first.refill);
                // Calls on one key under one refill rule (a rule changed mid-batch is its own
                // group); the stable sort kept their arrival order.
                let (group, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut batch).into_iter().partition(|w| w.id == id && w.refill == refill);
                let id = id.as_str();
                batch = rest;
                // One instant for the group: the latest call's, so a refill due for any is applied.
                let now = group.iter().map(|w| w.now).max().unwrap_or(Timestamp::from_millis(0));
                let total: i64 = group.iter().map(|w| w.cost).sum();
                let all_at_once = match spend_once(tx.connection(), id, total, refill.as_ref(), now).await {
                    Ok(spent) => spent,
                    Err(e) => {
                        batch.extend(group);
                        return Err(e);
                    }
                };
                match all_at_once {
                    Spend::Spent(after) => {
                        // Each call's balance is what was left after it, in arrival order.
                        let mut left = after.remaining + total;
                        for waiter in group {
                            left -= waiter.cost;
                            answers.push((waiter, Spend::Spent(CreditBalance { remaining: left, ..after })));
                        }
                    }
                    // Not all fit: one by one, so the last credits go to the earliest calls.
                    Spend::Exhausted(_) if group.len() > 1 => {
                        let mut group = group.into_iter();
                        while let Some(waiter) = group.next() {
                            // Gone meanwhile: it spends nothing (and its credit is not
                            // briefly missing for the calls after it).
                            if waiter.answer.is_closed() {
                                continue;
                            }
                            match spend_once(tx.connection(), id, waiter.cost, refill.as_ref(), now).await {
                                Ok(spent) => answers.push((waiter, spent)),
                                Err(e) => {
                                    batch.push(waiter);
                                    batch.extend(group);
                                    return Err(e);
                                }
                            }
                        }
                    }
                    other => answers.extend(group.into_iter().map(|w| (w, other))),
                }
            }
            if let Spender::Batch(tx) = tx {
                tx.commit().await?;
            }
            Ok(())
        }
        .await;
        let committed = match &spent {
            Ok(()) => answers,
            // Spent one by one, each by its own commit: those before the failure stand.
            Err(_) if one_key => answers,
            Err(_) => {
                batch.extend(answers.into_iter().map(|(w, _)| w));
                Vec::new()
            }
        };
        if let Err(e) = &spent {
            tracing::warn!(calls = batch.len(), error = %e, "spending credits failed; these calls spent nothing");
            for waiter in batch {
                let _ = waiter.answer.send(Err(spend_failed(e)));
            }
        }
        // A call whose caller gave up while its spend ran (its deadline passed) was refused:
        // what it spent goes back.
        let mut abandoned = Vec::new();
        for (waiter, spent) in committed {
            let Waiter { id, cost, refill, answer, .. } = waiter;
            if let Err(Ok(Spend::Spent(after))) = answer.send(Ok(spent)) {
                abandoned.push(Abandoned { id, cost, refill, period: after.period });
            }
        }
        if !abandoned.is_empty() {
            self.refund(&abandoned).await;
        }
    }

    /// Gives back what calls nobody heard were admitted spent, capped at the most a
    /// balance holds. Under a `to` refill, only
    /// within the period it was spent in: a refill since then set the balance anew. Runs
    /// before this replica's next batch on the lane, so none of its calls decides on a
    /// balance the refund is about to change (another replica's may).
    async fn refund(&self, abandoned: &[Abandoned]) {
        for Abandoned { id, cost, refill, period } in abandoned {
            let adds = refill.is_some_and(|r| r.mode == RefillMode::Add);
            let refunded = sqlx::query(
                "UPDATE key_credits SET remaining = CASE WHEN remaining + $2 > $5 THEN $5 ELSE remaining + $2 END \
                 WHERE key_id = $1 AND refill = $3 AND ($6 = 1 OR period = $4)",
            )
            .bind(id.as_str())
            .bind(*cost)
            .bind(refill_spec(refill.as_ref()))
            .bind(*period)
            .bind(CreditBalance::MAX)
            .bind(i32::from(adds))
            .execute(&self.pool)
            .await;
            if let Err(e) = refunded {
                tracing::warn!(error = %e, "credits spent by a call nobody was answered for were not given back");
            }
        }
    }
}

/// A spend that committed for a call whose caller had gone: given back.
pub(super) struct Abandoned {
    /// The holder, as `key_credits.key_id` names it.
    id: String,
    cost: i64,
    refill: Option<Refill>,
    /// The refill period it was spent in.
    period: i64,
}

/// Where a batch spends: a connection of its own (one key), or a transaction (several).
pub(super) enum Spender {
    Alone(sqlx::pool::PoolConnection<sqlx::Any>),
    Batch(sqlx::Transaction<'static, sqlx::Any>),
}

impl Spender {
    fn connection(&mut self) -> &mut sqlx::AnyConnection {
        match self {
            Spender::Alone(connection) => connection,
            Spender::Batch(tx) => tx,
        }
    }
}

/// One conditional UPDATE: the row lock (Postgres) or the write lock (SQLite) makes the
/// check and the spend one step, so two replicas never spend the last credit twice. The
/// refill is computed in the same statement, as Refill::refilled does.
pub(super) async fn spend_once(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    cost: i64,
    refill: Option<&Refill>,
    now: Timestamp,
) -> Result<Spend, StoreError> {
    let (period, amount, add) = match refill {
        Some(r) => (r.period(now), r.amount, r.mode == RefillMode::Add),
        // No refill: no stored period is ever older than i64::MIN.
        None => (i64::MIN, 0, false),
    };
    let refilled = if add {
        "CASE WHEN period < $3 THEN CASE WHEN remaining + $4 * ($3 - period) > $5 THEN $5 \
               ELSE remaining + $4 * ($3 - period) END ELSE remaining END"
    } else {
        "CASE WHEN period < $3 THEN $4 ELSE remaining END"
    };
    let sql = format!(
        "UPDATE key_credits SET remaining = ({refilled}) - $2, \
               period = CASE WHEN period < $3 THEN $3 ELSE period END \
             WHERE key_id = $1 AND refill = $6 AND ({refilled}) >= $2 \
             RETURNING remaining, period"
    );
    let spent = sqlx::query(&sql)
        .bind(id)
        .bind(cost)
        .bind(period)
        .bind(amount)
        .bind(CreditBalance::MAX)
        .bind(refill_spec(refill))
        .fetch_optional(&mut *conn)
        .await?;
    let balance = |row: &AnyRow| -> Result<CreditBalance, StoreError> {
        Ok(CreditBalance { remaining: row.try_get("remaining")?, period: row.try_get("period")? })
    };
    if let Some(row) = spent {
        return Ok(Spend::Spent(balance(&row)?));
    }
    let left = sqlx::query("SELECT remaining, period, refill FROM key_credits WHERE key_id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match left {
        Some(row) if row.try_get::<&str, _>("refill")? != refill_spec(refill) => Spend::RuleChanged,
        Some(row) => Spend::Exhausted(balance(&row)?),
        None => Spend::Unmetered,
    })
}

#[async_trait::async_trait]
impl KeyUse for SqlStore {
    #[tracing::instrument(skip_all, err)]
    async fn spend_credits(
        &self,
        holder: &CreditHolder,
        cost: i64,
        refill: Option<&Refill>,
        now: Timestamp,
    ) -> Result<Spend, StoreError> {
        let id = holder.stored();
        let lane = self.spending.lane(&id);
        let (answer, mut answered) = tokio::sync::oneshot::channel();
        let waiter = Waiter { id, cost, refill: refill.copied(), now, answer };
        lane.waiting.lock().unwrap_or_else(|e| e.into_inner()).push(waiter);
        let turn = lane.turn.clone().lock_owned().await;
        // Whoever took this call's spend answered it before giving up the turn; if nobody
        // did, it is still waiting and this call takes the lane's whole queue.
        if let Ok(answer) = answered.try_recv() {
            return answer;
        }
        let batch = std::mem::take(&mut *lane.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        // The batch runs on its own task: the calls in it (other keys' among them) are
        // answered even if this call's deadline passes and its future is dropped.
        let store = self.clone();
        tokio::spawn(async move {
            match store.spending.slots.acquire().await {
                Ok(_slot) => store.spend_batch(batch).await,
                Err(_) => batch.into_iter().for_each(|w| drop(w.answer.send(Err(corrupt("the spend slots closed"))))),
            }
            drop(turn);
        });
        // Not answered: the call that took it was abandoned (its deadline passed) mid-spend.
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(Box::new(std::io::Error::other("the credit spend was abandoned"))))
        })
    }

    #[tracing::instrument(skip_all, fields(keys = uses.len()), err)]
    async fn record_key_usage(&self, uses: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for (id, at) in uses {
            sqlx::query(
                "INSERT INTO key_usage (key_id, last_used_at) VALUES ($1, $2) \
                 ON CONFLICT (key_id) DO UPDATE SET last_used_at = CASE \
                   WHEN excluded.last_used_at > key_usage.last_used_at THEN excluded.last_used_at \
                   ELSE key_usage.last_used_at END",
            )
            .bind(id.to_string())
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Not a change of the key (no version bump, no audit event), but on Postgres the
    /// row's trigger still tells every replica to reload it, digest included.
    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn remember_verified(&self, id: KeyId, hash: &SecretHash, digest: &VerifiedDigest) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET verified_digest = $1 WHERE id = $2 AND secret_hash = $3 \
             AND (verified_digest IS NULL OR verified_digest <> $1)",
        )
        .bind(digest.to_hex())
        .bind(id.to_string())
        .bind(hash.expose_phc())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(key_id = %id), err)]
    async fn adopt_imported(
        &self,
        id: KeyId,
        old: &SecretHash,
        new: &SecretHash,
        lookup: &str,
        digest: &VerifiedDigest,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET secret_hash = $3, lookup = $4, verified_digest = $5 \
             WHERE id = $1 AND secret_hash = $2",
        )
        .bind(id.to_string())
        .bind(old.expose_phc())
        .bind(new.expose_phc())
        .bind(lookup)
        .bind(digest.to_hex())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
