"""The messaging kernel: what saga/, services/ and analytics/ stand on."""
