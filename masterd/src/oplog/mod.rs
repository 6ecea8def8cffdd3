//! The op log: placeholder until the log store lands.
