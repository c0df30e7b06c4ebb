pub mod fsio;
pub mod model;
