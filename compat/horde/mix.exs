defmodule Horde.MixProject do
  use Mix.Project

  # A drop-in for Horde 0.10 backed by Drove: its OTP app is :horde so that an application
  # (or a library with `{:horde, "~> 0.10", optional: true}`, such as Sagents) gets the
  # `Horde.*` modules from Drove with one dependency line:
  #
  #     {:horde, path: "path/to/drove/compat/horde", override: true}
  def project do
    [
      app: :horde,
      version: "0.10.0",
      elixir: "~> 1.14",
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [{:drove, path: "../.."}]
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # The main project's multi-node helpers (Drove.TestCluster and friends) are compiled into
  # this project's test build, so that the peers they start load them from the same code path.
  defp elixirc_paths(:test),
    do: ["lib", "test/support", Path.expand("../../test/support", __DIR__)]

  defp elixirc_paths(_env), do: ["lib"]
end
