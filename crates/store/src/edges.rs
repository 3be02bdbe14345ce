//! What each edge last reported. Reports are observations, not
//! configuration: they are not versioned, audited or in the change feed.

use sqlx::Row;

use crate::{Store, StoreError};

/// An edge's last report, as JSON, and when it arrived.
#[derive(Debug, Clone)]
pub struct EdgeReport {
    pub cluster: String,
    pub status: String,
    pub reported_at: String,
}

impl Store {
    pub async fn put_edge_report(&self, report: &EdgeReport) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO edge_status (cluster, status, reported_at) VALUES ($1, $2, $3)
             ON CONFLICT (cluster) DO UPDATE SET status = excluded.status, reported_at = excluded.reported_at",
        )
        .bind(&report.cluster)
        .bind(&report.status)
        .bind(&report.reported_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn edge_reports(&self) -> Result<Vec<EdgeReport>, StoreError> {
        let rows =
            sqlx::query("SELECT cluster, status, reported_at FROM edge_status ORDER BY cluster")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(EdgeReport {
                    cluster: r.try_get(0)?,
                    status: r.try_get(1)?,
                    reported_at: r.try_get(2)?,
                })
            })
            .collect()
    }
}
