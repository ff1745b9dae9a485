package rules

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
)

// Key is a compiled `order_by` expression: it gives each change the ordering key under which
// a sink delivers it (changes of one key one at a time, in acceptance order). It is immutable
// and safe for concurrent use.
type Key struct {
	t *Template
}

// CompileKey compiles an `order_by` expression, such as `conversation` or
// `value.metadata.phone_number_id`. Its result must be a string, a number or a bool (nil
// meaning "no key"). It fails, with an *ExprError, if the expression does not compile or its
// type is known to be something else (a list, a map, a time); an expression whose type is
// only known at run time compiles, and Eval fails for a result of another type.
func CompileKey(src string) (*Key, error) {
	p, err := compile(src)
	if err != nil {
		return nil, err
	}
	if t := p.Node().Type(); t != nil {
		switch t.Kind() {
		case reflect.String, reflect.Bool, reflect.Interface,
			reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
			reflect.Float32, reflect.Float64:
		case reflect.Slice, reflect.Array:
			return nil, &ExprError{Msg: "must give a string or a number to order by, got a list"}
		case reflect.Map:
			return nil, &ExprError{Msg: "must give a string or a number to order by, got a map"}
		default:
			return nil, &ExprError{Msg: fmt.Sprintf("must give a string or a number to order by, got %s", t)}
		}
	}
	return &Key{t: newTemplate(src, p)}, nil
}

// Source returns the expression as written.
func (k *Key) Source() string { return k.t.src }

// NeedsValue reports whether the expression reads `value`.
func (k *Key) NeedsValue() bool { return k.t.needsValue }

// Eval evaluates the key for one change. A string result is the key; a number or a bool is
// written in its shortest decimal form (1, 2.5, true); nil (or "") is no key: the change is
// not ordered. Any other result, or a run-time failure, is an *ExprError.
func (k *Key) Eval(env *Env) (string, error) {
	out, err := k.t.Eval(env)
	if err != nil {
		return "", err
	}
	switch v := out.(type) {
	case nil:
		return "", nil
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int:
		return strconv.Itoa(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return "", &ExprError{Msg: fmt.Sprintf("expected a string or a number to order by, got %v", v)}
		}
		return strconv.FormatFloat(v, 'f', -1, 64), nil
	}
	rv := reflect.ValueOf(out)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(rv.Uint(), 10), nil
	case reflect.Float32:
		return strconv.FormatFloat(rv.Float(), 'f', -1, 32), nil
	}
	return "", &ExprError{Msg: fmt.Sprintf("expected a string or a number to order by, got %T", out)}
}
