//! The fake OpenSIPS (stub).
