//! The API as the server serves it (hyper's HTTP/1 with the server's limits, the bearer-token
//! layer, the router, its path and query extractors and handlers), on an in-memory
//! connection: the input is whatever a client sends (one request, several pipelined, or
//! garbage), then the client closes its sending side. A panic, a hang or a 500 is a bug; a
//! 4xx is the expected answer to nonsense.

#![no_main]

use std::sync::LazyLock;

use collector::fuzzing::{ApiHarness, response_statuses};
use libfuzzer_sys::fuzz_target;

static API: LazyLock<ApiHarness> = LazyLock::new(ApiHarness::new);

fuzz_target!(|bytes: &[u8]| {
    let response = API.exchange(bytes);
    for status in response_statuses(&response) {
        assert_ne!(status, 500, "a request made the API fail");
    }
});
