// Emits the default config of runtime-tools' generate.New("linux"), as
// validation/util.GetDefaultGenerator() uses (root "rootfs", terminal false).
package main

import (
	"encoding/json"
	"os"

	"github.com/opencontainers/runtime-tools/generate"
)

func main() {
	g, err := generate.New("linux")
	if err != nil {
		panic(err)
	}
	g.SetRootPath("rootfs")
	g.SetProcessTerminal(false)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(g.Config); err != nil {
		panic(err)
	}
}
