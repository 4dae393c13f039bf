//! The operator side of the `catenary` tool: the operator's key and config (`catenary init`),
//! the transport to a node's API, and the commands over the API (docs/api.md).
pub mod bench;
pub mod clusternew;
pub mod commands;
pub mod config;
pub mod fabric;
pub mod fabric_call;
pub mod relay;
pub mod relay_route;
pub mod transport;
pub mod wgconfig;
