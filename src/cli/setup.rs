//! What every command needs before it runs: settings (file, environment, `--database`), the
//! configured sources, and the database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::failure::Failure;
use crate::config::Settings;
use crate::store::{self, Store, StoreError};

/// The file, the environment, then `--database`: at start-up, and again on SIGHUP.
pub(crate) fn settings_from(
    config: Option<&Path>,
    database: Option<&str>,
) -> Result<Settings, Failure> {
    let mut settings =
        Settings::load(config, std::env::vars()).map_err(|e| Failure::Config(e.into()))?;
    if let Some(url) = database {
        settings.database.url = url.to_owned();
    }
    Ok(settings)
}

/// Builds the configured sources (all, or the one named).
pub(crate) fn build_sources(
    config: &Option<PathBuf>,
    settings: &Settings,
    only: Option<&str>,
) -> Result<Vec<crate::sync::SyncSource>, Failure> {
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    for warning in settings.credential_warnings(config.as_deref(), credentials.as_deref()) {
        tracing::warn!("{warning}");
    }
    let mut sources = crate::sync::sources(settings, config.as_deref(), credentials.as_deref())
        .map_err(|e| Failure::Config(e.into()))?;
    if let Some(name) = only {
        sources.retain(|s| s.name() == name);
        if sources.is_empty() {
            return Err(Failure::Config(anyhow::anyhow!(
                "no [[source]] named {name:?} in the configuration"
            )));
        }
    }
    Ok(sources)
}

/// Opens the configured database, migrating it unless told not to.
pub async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    let store = connect_store(settings).await?;
    if settings.database.migrate_on_start {
        if let Err(e) = migrate(store.as_ref(), settings).await {
            store.close().await;
            return Err(e.into());
        }
    }
    Ok(store)
}

/// Opens the configured database for a command that only reads: nothing is migrated or written
/// (no write lock is needed, a read-only user will do), but a database newer than this build is
/// refused, as every command refuses it.
pub async fn open_for_reading(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    let store = connect_store(settings).await?;
    match store.schema_state().await.and_then(|s| s.check()) {
        Ok(()) => Ok(store),
        Err(e) => {
            store.close().await;
            Err(e.into())
        }
    }
}

/// Runs the migrations (which also write the data contract) and grants the reader role, if one
/// is configured: whenever migrations run, so a table a new version adds is readable at once.
pub(crate) async fn migrate(store: &dyn Store, settings: &Settings) -> Result<(), StoreError> {
    store.migrate().await?;
    let role = settings.database.reader_role.trim();
    if !role.is_empty() {
        store.grant_reader(role).await?;
    }
    Ok(())
}

/// Connects to the configured database, without migrating.
pub(crate) async fn connect_store(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    let options = settings
        .database
        .connect_options()
        .map_err(|e| Failure::Config(e.into()))?;
    store::connect(&settings.database.url, options)
        .await
        .map_err(|e| Failure::Runtime(e.into()))
}
