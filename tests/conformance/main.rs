//! Black-box conformance suite for the `broker` binary.
//!
//! Every case starts its own `broker` process on 127.0.0.1 with a free port and
//! a fresh temporary data folder, and talks to it over HTTP and SSE only. A
//! server of the `postgres` storage also gets a fresh schema in the database
//! that `BROKER_TEST_DATABASE_URL` names. The cases check the public contract:
//! the debug page, inserts, validation, publication order and timing, history,
//! CORS, tokens, and what survives a restart or `kill -9`.
//!
//! Layout:
//! - `harness`: the server process, HTTP helpers and clock helpers.
//! - `database`: the PostgreSQL schema of each server of the `postgres` storage.
//! - `sse`: an SSE client over raw TCP that keeps the exact bytes of each message.
//! - `cases`: the test bodies, one module per topic, each written once for any
//!   runtime and storage pair.
//!
//! The `conformance!` invocation at the bottom stamps out one module per
//! (runtime, storage) pair with one `#[tokio::test]` per case. Every pair runs
//! the shared cases. The cases about the data folder and the local disk run
//! for the storages that keep their data there, and each pair lists the case
//! sets it runs, so no pair skips a case unseen.

// Without a file storage in the build, the file-storage cases and the harness
// methods that only they call are compiled but never called.
#![cfg_attr(not(any(feature = "redb", feature = "sled")), allow(dead_code))]

mod cases;
mod database;
mod harness;
mod sse;

/// Expands to one `#[tokio::test]` per case, each calling `crate::cases::<path>(pair)`.
///
/// To add a case, write the function in `cases/` and add one line here.
macro_rules! case_tests {
    ($pair:ident: $($(#[$attribute:meta])* $test:ident => $($path:ident)::+,)*) => {
        $(
            $(#[$attribute])*
            #[tokio::test]
            async fn $test() {
                crate::cases::$($path)::+($pair).await
            }
        )*
    };
}

/// Expands to the cases that every pair runs.
macro_rules! shared_cases {
    ($pair:ident) => {
        case_tests! { $pair:
            startup_log => config::startup_log,
            cli_flags => config::cli_flags,
            health_ok => config::health_ok,
            openapi_served => config::openapi_served,

            debug_page_served => page::served,
            debug_page_switched_off => page::switched_off,

            insert_returns_record => insert::returns_record,
            insert_defaults => insert::defaults,
            insert_ignores_published => insert::ignores_published,
            insert_content_types => insert::content_types,
            insert_name_bytes => insert::name_bytes,
            insert_timestamp_bounds => insert::timestamp_bounds,
            data_kept_unchanged => insert::data_kept_unchanged,
            deep_data_handled => insert::deep_data_handled,

            reject_bad_body => validation::bad_body,
            reject_bad_event => validation::bad_event,
            reject_bad_timestamp => validation::bad_timestamp,
            reject_bad_published => validation::bad_published,
            reject_unknown_field => validation::unknown_field,
            reject_duplicate_field => validation::duplicate_field,
            body_over_limit => validation::body_over_limit,
            default_body_limit => validation::default_body_limit,
            unsupported_media_type => validation::unsupported_media_type,
            unknown_route => validation::unknown_route,
            wrong_method => validation::wrong_method,

            sync_on_connect => delivery::sync_on_connect,
            live_two_subscribers => delivery::live_two_subscribers,
            publication_ids_grow => delivery::publication_ids_grow,
            id_sequences_distinct => delivery::id_sequences_distinct,
            sse_headers => delivery::sse_headers,
            sse_message_format => delivery::sse_message_format,
            keep_alive_comment => delivery::keep_alive_comment,
            disconnect_spares_others => delivery::disconnect_spares_others,
            slow_subscriber_dropped => delivery::slow_subscriber_dropped,
            events_on_reused_connection => delivery::events_on_reused_connection,

            connection_limit => connections::connection_limit,
            header_timeout => connections::header_timeout,
            body_timeout => connections::body_timeout,
            churn_leaves_nothing => connections::churn_leaves_nothing,

            future_on_time => schedule::future_on_time,
            current_is_last_published => schedule::current_is_last_published,
            due_together_order => schedule::due_together_order,

            collection_insertion_order => collection::insertion_order,
            collection_unknown_empty => collection::unknown_empty,
            collection_percent_decoded => collection::percent_decoded,
            collection_bad_path => collection::bad_path,

            cors_default_any => cors::default_any,
            cors_origin_list => cors::origin_list,
            cors_preflight => cors::preflight,

            restart_after_sigterm => restart::after_sigterm,
            restart_after_sigkill => restart::after_sigkill,
            sigterm_closes_streams => restart::sigterm_closes_streams,
            sigint_exits => restart::sigint_exits,
            sigterm_with_stalled_reader => restart::sigterm_with_stalled_reader,
            sigterm_stops_accepting => restart::sigterm_stops_accepting,
            pending_fires_after_restart => restart::pending_fires_after_restart,
            overdue_fires_on_start => restart::overdue_fires_on_start,
            created_survives_sigkill => restart::created_survives_sigkill,

            auth_unsigned_insert_rejected => auth::unsigned_insert_rejected,
            auth_signed_insert_accepted => auth::signed_insert_accepted,
            auth_bad_tokens_rejected => auth::bad_tokens_rejected,
            auth_publisher_claim_limits => auth::publisher_claim_limits,
            auth_subscriber_token_required => auth::subscriber_token_required,
            auth_subscriber_token_sources => auth::subscriber_token_sources,
            auth_subscriber_claim_filters => auth::subscriber_claim_filters,
            auth_open_publishing_warning => auth::open_publishing_warning,
            auth_cors_credentials => auth::cors_credentials,

            sigkill_under_load => crash::sigkill_under_load,

            resume_after_id => resume::resume_after_id,
            resume_query_param => resume::resume_query_param,
            resume_invalid_id => resume::resume_invalid_id,
            resume_unknown_id => resume::resume_unknown_id,
            resume_after_restart => resume::resume_after_restart,
            retry_field_first => resume::retry_field_first,
            filter_by_name => resume::filter_by_name,

            metrics_exposition => metrics::exposition,
            metrics_count_inserts => metrics::counts_inserts,
            metrics_subscriber_gauge => metrics::subscriber_gauge,
            metrics_rejected_by_code => metrics::rejected_by_code,
            metrics_pending_gauge => metrics::pending_gauge,
            metrics_disabled => metrics::disabled,
            json_log_lines => metrics::json_log_lines,
        }
    };
}

/// Expands to the cases about the data folder and the local disk, for the
/// storages that keep their data in files there. The `postgres` storage keeps
/// its data in a PostgreSQL server and ignores the data folder.
#[cfg(any(feature = "redb", feature = "sled"))]
macro_rules! file_storage_cases {
    ($pair:ident) => {
        case_tests! { $pair:
            data_dir_created => config::data_dir_created,
            default_data_dir => config::default_data_dir,
            disk_full_recovers => crash::disk_full_recovers,
            unreadable_data_dir => crash::unreadable_data_dir,
            // Needs the other storage in the binary to try it on the folder.
            #[cfg(all(feature = "redb", feature = "sled"))]
            other_storage_rejected => restart::other_storage_rejected,
        }
    };
}

/// Expands to one module per (runtime, storage) pair, each holding the cases
/// of the case-set macros listed after the pair.
macro_rules! conformance {
    ($(
        $(#[$attribute:meta])*
        $module:ident => ($runtime:literal, $storage:literal): $($cases:ident),+;
    )*) => {
        $(
            $(#[$attribute])*
            mod $module {
                const PAIR: crate::harness::Pair = crate::harness::Pair {
                    runtime: $runtime,
                    storage: $storage,
                };

                $($cases! { PAIR })+
            }
        )*
    };
}

// One entry per (runtime, storage) pair, each compiled when the binary under
// test has both features, with the case sets it runs. ci/test.sh runs the
// suite with every feature on, so every pair runs there. The postgres pairs
// need the PostgreSQL server that ci/postgres.sh starts.
conformance! {
    #[cfg(all(feature = "tokio-axum", feature = "redb"))]
    tokio_axum_redb => ("tokio-axum", "redb"): shared_cases, file_storage_cases;
    #[cfg(all(feature = "tokio-axum", feature = "sled"))]
    tokio_axum_sled => ("tokio-axum", "sled"): shared_cases, file_storage_cases;
    #[cfg(all(feature = "tokio-axum", feature = "postgres"))]
    tokio_axum_postgres => ("tokio-axum", "postgres"): shared_cases;
    #[cfg(all(feature = "async-std-tide", feature = "redb"))]
    async_std_tide_redb => ("async-std-tide", "redb"): shared_cases, file_storage_cases;
    #[cfg(all(feature = "async-std-tide", feature = "sled"))]
    async_std_tide_sled => ("async-std-tide", "sled"): shared_cases, file_storage_cases;
    #[cfg(all(feature = "async-std-tide", feature = "postgres"))]
    async_std_tide_postgres => ("async-std-tide", "postgres"): shared_cases;
}
