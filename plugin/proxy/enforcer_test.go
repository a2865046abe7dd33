package proxy

import (
	"reflect"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestCreateNames(t *testing.T) {
	id := "sha256:" + strings.Repeat("a", 64)
	dig := "sha256:" + strings.Repeat("b", 64)
	img := &runtimeapi.Image{
		Id:          id,
		RepoTags:    []string{"registry.example/app:v1", "registry.example/other:v2"},
		RepoDigests: []string{"registry.example/app@" + dig},
	}
	tests := []struct {
		name string
		spec *runtimeapi.ImageSpec
		want []nameDigest
	}{
		{"pod string preferred, node digest attached",
			&runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: "registry.example/app:v1"},
			[]nameDigest{{"registry.example/app:v1", dig}}},
		{"image ID only: every tag on the node",
			&runtimeapi.ImageSpec{Image: id},
			[]nameDigest{{"registry.example/app:v1", dig}, {"registry.example/other:v2", ""}}},
		{"image ID as the user-specified string too (crictl): every tag on the node",
			&runtimeapi.ImageSpec{Image: id, UserSpecifiedImage: id},
			[]nameDigest{{"registry.example/app:v1", dig}, {"registry.example/other:v2", ""}}},
		{"name without user-specified string",
			&runtimeapi.ImageSpec{Image: "registry.example/app:v1"},
			[]nameDigest{{"registry.example/app:v1", dig}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := createNames(tc.spec, img); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("createNames = %v, want %v", got, tc.want)
			}
		})
	}
}
