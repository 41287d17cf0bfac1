module github.com/layerskip/layerskip-go

go 1.21
