package main

import (
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// printFlags writes a flag set's help like flag.PrintDefaults, with two differences:
// flags that share one variable (-c and --config) are one entry, "-c, --config FILE",
// and names longer than a letter are shown with two dashes, as people type them.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	type entry struct{ flags []*flag.Flag }
	var entries []*entry
	byVar := map[uintptr]*entry{}
	fs.VisitAll(func(f *flag.Flag) {
		v := reflect.ValueOf(f.Value)
		if v.Kind() == reflect.Pointer {
			if e, ok := byVar[v.Pointer()]; ok {
				e.flags = append(e.flags, f)
				return
			}
		}
		e := &entry{flags: []*flag.Flag{f}}
		entries = append(entries, e)
		if v.Kind() == reflect.Pointer {
			byVar[v.Pointer()] = e
		}
	})
	for _, e := range entries {
		// The short name first: "-c, --config".
		if len(e.flags) > 1 && len(e.flags[1].Name) < len(e.flags[0].Name) {
			e.flags[0], e.flags[1] = e.flags[1], e.flags[0]
		}
		var names []string
		for _, f := range e.flags {
			names = append(names, dashed(f.Name))
		}
		f := e.flags[0]
		arg, usage := flag.UnquoteUsage(f)
		if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
			arg = ""
		}
		line := "  " + strings.Join(names, ", ")
		if len(f.Name) > 1 {
			line = "    " + line // long names line up under "-c, --config"
		}
		if arg != "" {
			line += " " + arg
		}
		fmt.Fprintf(w, "%s\n    \t%s", line, usage)
		if d := f.DefValue; d != "" && d != "false" && d != "0" {
			fmt.Fprintf(w, " (default %q)", d)
		}
		fmt.Fprintln(w)
	}
}

func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}
