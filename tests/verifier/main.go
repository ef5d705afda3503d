// Command verifier checks a BLOnet audit export and proofs with code that shares nothing with
// BLOnet: golang.org/x/mod/sumdb/note for the signed checkpoints (Go's crypto/ed25519) and
// golang.org/x/mod/sumdb/tlog for the RFC 9162 tree, its inclusion and consistency proofs.
//
//	verifier -vkey VKEY -export FILE [-proofs FILE]
//
// It prints one JSON object (tree size, root, counts) and exits 0, or prints the failure and exits 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

// open verifies a signed note with the verifier key and parses the C2SP checkpoint inside.
func open(msg string, verifiers note.Verifiers) (checkpoint, error) {
	n, err := note.Open([]byte(msg), verifiers)
	if err != nil {
		return checkpoint{}, err
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		return checkpoint{}, fmt.Errorf("checkpoint has %d lines", len(lines))
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return checkpoint{}, err
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return checkpoint{}, err
	}
	return checkpoint{lines[0], size, root}, nil
}

type proofs struct {
	Inclusion []struct {
		Index    int64       `json:"index"`
		TreeSize int64       `json:"tree_size"`
		Hashes   []tlog.Hash `json:"hashes"`
	} `json:"inclusion"`
	Consistency []struct {
		First  int64       `json:"first"`
		Second int64       `json:"second"`
		Hashes []tlog.Hash `json:"hashes"`
	} `json:"consistency"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "verifier: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	vkey := flag.String("vkey", "", "the log's verifier key")
	export := flag.String("export", "", "a `blonet audit export` file")
	proofFile := flag.String("proofs", "", "JSON proofs served by the audit API, to check against the export")
	flag.Parse()

	verifier, err := note.NewVerifier(*vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	verifiers := note.VerifierList(verifier)

	f, err := os.Open(*export)
	if err != nil {
		fail("%v", err)
	}
	defer f.Close()
	in := bufio.NewReaderSize(f, 1<<20)
	readLine := func() ([]byte, bool) {
		line, err := in.ReadBytes('\n')
		if err != nil {
			return nil, false
		}
		return bytes.TrimSuffix(line, []byte("\n")), true
	}
	headerLine, _ := readLine()
	var header struct {
		TreeSize    int64 `json:"tree_size"`
		Checkpoints int   `json:"checkpoints"`
	}
	if err := json.Unmarshal(headerLine, &header); err != nil {
		fail("export header: %v", err)
	}
	var signed []checkpoint
	for i := 0; i < header.Checkpoints; i++ {
		line, _ := readLine()
		var msg string
		if err := json.Unmarshal(line, &msg); err != nil {
			fail("checkpoint %d: %v", i, err)
		}
		cp, err := open(msg, verifiers)
		if err != nil {
			fail("checkpoint %d: %v", i, err)
		}
		signed = append(signed, cp)
	}
	if len(signed) == 0 {
		fail("no checkpoint")
	}
	latest := signed[len(signed)-1]

	// Rebuild the tree the way Go's checksum database does: every stored hash in memory.
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			out[i] = stored[x]
		}
		return out, nil
	})
	roots := map[int64]tlog.Hash{}
	var n int64
	for n < latest.size {
		data, ok := readLine()
		if !ok {
			fail("the export holds %d entries, the checkpoint %d", n, latest.size)
		}
		hashes, err := tlog.StoredHashes(n, data, reader)
		if err != nil {
			fail("entry %d: %v", n, err)
		}
		stored = append(stored, hashes...)
		n++
		for _, cp := range signed {
			if cp.size == n {
				root, _ := tlog.TreeHash(n, reader)
				if root != cp.root {
					fail("tree of %d entries has root %v, the signed checkpoint says %v", n, root, cp.root)
				}
				roots[n] = root
			}
		}
	}

	var checked struct{ Inclusion, Consistency int }
	if *proofFile != "" {
		raw, err := os.ReadFile(*proofFile)
		if err != nil {
			fail("%v", err)
		}
		var p proofs
		if err := json.Unmarshal(raw, &p); err != nil {
			fail("proofs: %v", err)
		}
		for _, ip := range p.Inclusion {
			root, err := tlog.TreeHash(ip.TreeSize, reader)
			if err != nil {
				fail("%v", err)
			}
			leaf, _ := reader.ReadHashes([]int64{tlog.StoredHashIndex(0, ip.Index)})
			if err := tlog.CheckRecord(ip.Hashes, ip.TreeSize, root, ip.Index, leaf[0]); err != nil {
				fail("inclusion of %d in %d: %v", ip.Index, ip.TreeSize, err)
			}
			checked.Inclusion++
		}
		for _, cp := range p.Consistency {
			first, _ := tlog.TreeHash(cp.First, reader)
			second, _ := tlog.TreeHash(cp.Second, reader)
			if err := tlog.CheckTree(cp.Hashes, cp.Second, second, cp.First, first); err != nil {
				fail("consistency %d -> %d: %v", cp.First, cp.Second, err)
			}
			checked.Consistency++
		}
	}
	out, _ := json.Marshal(map[string]any{
		"origin": latest.origin, "tree_size": latest.size, "root": base64.StdEncoding.EncodeToString(latest.root[:]),
		"checkpoints": len(signed), "inclusion_proofs": checked.Inclusion, "consistency_proofs": checked.Consistency,
	})
	fmt.Println(string(out))
}
