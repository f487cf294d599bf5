// Command releasetool packs what scripts/release built: the binary archives, the container image (assembled offline from the
// static binaries with go-containerregistry: no base image is pulled), and
// the push of that image. Every output is a function of its inputs and
// SOURCE_DATE_EPOCH only, so two runs on one commit give the same bytes.
//
//	releasetool archive -version V -epoch S -out DIR linux/amd64=BIN ...
//	releasetool image -version V -epoch S -revision R -source URL -certs FILE \
//	    -layout DIR -docker-tar FILE -docker-arch amd64 linux/amd64=BIN ...
//	releasetool push -layout DIR REF
package main

import (
	"fmt"
	"os"
)

const usage = `usage: releasetool archive|image|push [flags] ...
  archive  write pullcache_V_OS_ARCH.tar.gz per binary
  image    assemble the multi-arch image (OCI layout, docker-load tarball)
  push     push the layout's image index to a registry reference
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "archive":
		err = archiveCmd(os.Args[2:])
	case "image":
		err = imageCmd(os.Args[2:])
	case "push":
		err = pushCmd(os.Args[2:])
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "releasetool:", err)
		os.Exit(1)
	}
}
