// Package config is pullcache serve's configuration: one struct (Serve),
// its defaults written once here, its flags with their PULLCACHE_* fallbacks
// (ApplyEnv), and Validate, which refuses a configuration before anything is
// opened or listened on. Other commands reuse the defaults and flag types
// (List, Size) so that a default never drifts between commands.
//
// A Serve is plain data: fill it from flags, then read it from one
// goroutine, or copy it. Nothing here opens files or sockets.
package config
