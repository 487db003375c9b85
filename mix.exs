defmodule Mix.Tasks.Compile.DroveNif do
  @moduledoc false
  # Builds the NIF by running `make all` (see the Makefile header). It lives in
  # mix.exs, above the project, because a compiler under lib/ cannot compile the
  # project it belongs to, and there is no elixir_make (no Hex packages here).
  use Mix.Task.Compiler

  @recursive true

  @impl Mix.Task.Compiler
  def run(argv) do
    Mix.Project.ensure_structure()
    # `mix compile --force` rebuilds the C side too.
    flags = if "--force" in argv, do: ["-B"], else: []
    make!(flags ++ ["all"])
    {:ok, []}
  end

  @impl Mix.Task.Compiler
  def clean do
    make!(["clean"])
    :ok
  end

  defp make!(args) do
    make =
      System.get_env("MAKE") || System.find_executable("make") ||
        Mix.raise("""
        Could not find `make` in PATH, which is needed to build the Drove NIF.
        On Debian: apt-get install make gcc (or run `make setup` once make exists).
        """)

    opts = [
      cd: Path.dirname(Mix.Project.project_file()),
      env: make_env(),
      into: IO.stream(:stdio, :line),
      stderr_to_stdout: true
    ]

    case System.cmd(make, ["--no-print-directory" | args], opts) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("make #{Enum.join(args, " ")} failed (exit status #{status})")
    end
  end

  defp make_env do
    erts_include =
      System.get_env("ERTS_INCLUDE_DIR") ||
        Path.join([:code.root_dir(), "erts-#{:erlang.system_info(:version)}", "include"])

    # The running BEAM exports BINDIR, ROOTDIR, PROGNAME and EMU; they would confuse any `erl`
    # started by make, so they are unset (a nil value unsets).
    [
      {"MIX_ENV", to_string(Mix.env())},
      {"MIX_APP_PATH", Mix.Project.app_path()},
      {"MIX_BUILD_PATH", Mix.Project.build_path()},
      {"ERTS_INCLUDE_DIR", erts_include},
      {"MAKEFLAGS", makeflags()}
    ] ++ for(var <- ~w(BINDIR ROOTDIR PROGNAME EMU), do: {var, nil})
  end

  # Under `make -jN test`, MAKEFLAGS names the parent's jobserver pipes, which the BEAM does not
  # pass on to its children; without this the nested make warns "jobserver unavailable".
  defp makeflags do
    case System.get_env("MAKEFLAGS") do
      nil -> nil
      flags -> String.replace(flags, ~r/\s*--jobserver-(auth|fds)=\S+/, "")
    end
  end
end

defmodule Drove.MixProject do
  use Mix.Project

  def project do
    [
      app: :drove,
      version: "0.1.0",
      elixir: "~> 1.14",
      compilers: [:drove_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: []
    ]
  end

  def application do
    [
      mod: {Drove.Application, []},
      extra_applications: [:logger, :crypto]
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_env), do: ["lib"]
end
